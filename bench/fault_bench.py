"""Fault-injection benchmark (issue 12): success rates under 10 % mixed upstream faults, on the DEFAULT config.

One model, two credentials on two fake OpenAI upstreams (``tests/fakes/faulty_openai.py``, seeded) that each fail
10 % of requests with 429, 500 or a dropped connection (a reset, or for streams a clean FIN part-way); the real
``openai`` SDK with ``max_retries=0`` at a concurrency of 16. Prints the count of every outcome and exits non-zero
below the targets: 99.9 % of plain requests, 95 % of streams, and not one stream silently truncated.
Everything runs in this process on 127.0.0.1, on uvloop as the proxy does in production.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proxy")]

import uvloop  # noqa: E402
import yaml  # noqa: E402
from aiohttp import web  # noqa: E402
from tests.fakes.faulty_openai import FaultyUpstream  # noqa: E402
from tests.support.fault_load import MODEL, drive, gateway_config, success_rate  # noqa: E402

from cliproxy_proxy.__main__ import load_app  # noqa: E402
from cliproxy_proxy.loader import ConfigSource  # noqa: E402

CLIENT_KEY = "bench-client"
TARGETS = {"plain": 0.999, "stream": 0.95}


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def table(name: str, outcomes: Counter[str], seconds: float) -> str:
    total = sum(outcomes.values())
    rows = ", ".join(f"{k} {v}" for k, v in outcomes.most_common())
    return f"{name:<7} {total:>6} requests  {success_rate(outcomes):8.3%} ok  {total / seconds:7.1f} req/s  [{rows}]"


async def main(requests: int, rate: float, seed: int) -> int:
    import openai

    upstreams = [FaultyUpstream(f"sk-bench-{i}", MODEL, rate=rate, seed=seed + i) for i in range(2)]
    runners = []
    urls = []
    for upstream in upstreams:
        runner, url = await serve(upstream.app())
        runners.append(runner)
        urls.append(url + "/v1")
    with tempfile.TemporaryDirectory(prefix="cliproxy-fault-bench-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(
            yaml.safe_dump(gateway_config(CLIENT_KEY, [(u, s.key) for u, s in zip(urls, upstreams, strict=True)]))
        )
        proxy_runner, proxy_url = await serve(load_app(ConfigSource(path), 1.0))
        runners.append(proxy_runner)
        client = openai.AsyncOpenAI(base_url=f"{proxy_url}/v1", api_key=CLIENT_KEY, max_retries=0)
        results = {}
        for kind in ("plain", "stream"):
            started = time.perf_counter()
            outcomes = await drive(client, requests // 2, stream=kind == "stream")
            results[kind] = (outcomes, time.perf_counter() - started)
        await client.close()
    for runner in runners:
        await runner.cleanup()

    print(f"fault injection: {requests} requests, {rate:.0%} faults per upstream, concurrency 16, default config")
    for kind, (outcomes, seconds) in results.items():
        print(table(kind, outcomes, seconds))
    for i, upstream in enumerate(upstreams):
        seen = sum(upstream.outcomes.values())
        print(f"upstream{i} saw {seen} requests: {dict(upstream.outcomes.most_common())}")
    failed = [f"{kind} {success_rate(o):.3%} < {TARGETS[kind]:.1%}" for kind, (o, _) in results.items()
              if success_rate(o) < TARGETS[kind]]  # fmt: skip
    if results["stream"][0]["truncated"]:
        failed.append(f"{results['stream'][0]['truncated']} streams silently truncated")
    for line in failed:
        print(f"FAILED: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6000, help="half plain, half streamed")
    parser.add_argument("--rate", type=float, default=0.1, help="fault rate per upstream")
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    sys.exit(uvloop.run(main(args.requests, args.rate, args.seed)))
