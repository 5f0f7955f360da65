"""Config propagation benchmark: how long a rendered-config change takes to be served, API watch against volume.

A proxy watching its ConfigMap through the Kubernetes API (kmock's emulator on loopback, the API backend of the
operator tests) is compared with the same proxy reading a volume it polls every second: the baseline, which
in a real cluster also waits for the kubelet's sync (a minute or two; not modelled here). Each change adds a
model; the time is from the write to the proxy's routing table holding it. ``make bench`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "proxy")]

import kmock  # noqa: E402
from aiohttp import web  # noqa: E402
from tests.operator.kube import CONFIGMAPS, SECRETS, Cluster, Emulator, emulator_log, setup_emulator  # noqa: E402

from cliproxy_proxy.__main__ import load_app  # noqa: E402
from cliproxy_proxy.app import PROXY  # noqa: E402
from cliproxy_proxy.kubesource import ApiServer, KubeSource  # noqa: E402
from cliproxy_proxy.loader import ConfigSource  # noqa: E402

NAME = "cliproxy-default"


def config(models: int) -> str:
    entries = [{"name": f"model-{i}"} for i in range(models)]
    return json.dumps({"allow-unauthenticated": True, "openai-compatibility": [
        {"name": "up", "base-url": "http://127.0.0.1:9/v1", "api-key-entries": [{"api-key-file": "key"}],
         "models": entries}]})  # fmt: skip


async def timed(changes: int, write: Callable[[int], Awaitable[None]], app: web.Application) -> list[float]:
    """Seconds from each write to the proxy routing the model it added."""
    pauses = random.Random(8317)
    runner = web.AppRunner(app)
    await runner.setup()  # runs the app's lifecycle: the source starts watching
    samples = []
    try:
        for n in range(2, changes + 2):
            started = time.perf_counter()
            await write(n)
            while f"model-{n - 1}" not in app[PROXY].runtime.routes:  # noqa: ASYNC110 (watched from outside)
                await asyncio.sleep(0.001)
            samples.append(time.perf_counter() - started)
            await asyncio.sleep(pauses.uniform(0.0, 1.0))  # land anywhere in the poll period
    finally:
        await runner.cleanup()
    return samples


async def through_api(changes: int, workdir: Path) -> list[float]:
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        setup_emulator(emulator)
        url = str(server.url).rstrip("/")
        async with Cluster("emulator", url, "bench", emulator_log(emulator)) as cluster:
            await cluster.create(CONFIGMAPS, {"metadata": {"name": NAME}, "data": {"config.json": config(1)}})
            await cluster.create(SECRETS, {"metadata": {"name": NAME}, "data": {"key": "a2V5"}})

            async def write(n: int) -> None:
                await cluster.patch(CONFIGMAPS, NAME, {"data": {"config.json": config(n)}})

            source = KubeSource(workdir / "api-config", workdir / "api-secrets", api=ApiServer(url),
                                namespace="bench", name=NAME)  # fmt: skip
            return await timed(changes, write, load_app(source, reload_interval=1.0))


async def through_volume(changes: int, workdir: Path) -> list[float]:
    config_dir, secrets_dir = workdir / "config", workdir / "secrets"
    config_dir.mkdir()
    secrets_dir.mkdir()
    (config_dir / "config.json").write_text(config(1))
    (secrets_dir / "key").write_text("key")

    async def write(n: int) -> None:
        tmp = config_dir / ".config.json.tmp"
        tmp.write_text(config(n))
        tmp.replace(config_dir / "config.json")

    return await timed(changes, write, load_app(ConfigSource(config_dir, secrets_dir), reload_interval=1.0))


def summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {"changes": len(samples), "p50_ms": round(1000 * statistics.median(ordered), 1),
            "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 1),
            "max_ms": round(1000 * ordered[-1], 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "propagation.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        api = asyncio.run(through_api(args.changes, Path(tmp)))
        volume = asyncio.run(through_volume(args.changes, Path(tmp)))
    report = {"api_watch": summary(api), "volume_poll_1s": summary(volume)}
    report["p50_ratio_api_to_volume"] = round(report["api_watch"]["p50_ms"] / report["volume_poll_1s"]["p50_ms"], 3)
    print(f"config propagation, {args.changes} changes each (write -> served):")
    for name, row in (("API watch", report["api_watch"]), ("volume, polled 1 s", report["volume_poll_1s"])):
        print(f"  {name:<20} p50 {row['p50_ms']:>7.1f} ms  p95 {row['p95_ms']:>7.1f} ms  max {row['max_ms']:>7.1f} ms")
    print(f"  API/volume p50 ratio: {report['p50_ratio_api_to_volume']} (the kubelet's own sync delay comes on top "
          "of the volume's)")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["api_watch"]["max_ms"] < 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
