"""Operator benchmark: the pure render, then the operator itself on the emulator at scale.

1. ``render``: 1,000 ProviderRoutes over 200 ProviderCredentials as one namespace: its time (median of several
   runs, on this machine), the objects it would write, and the sizes against Kubernetes' 1 MiB object limit.
2. The operator, as its own process, against the in-memory API emulator with 2,000 routes in 200 namespaces:
   writes and reads per route until settled, time to all Ready after the last apply, a restart's writes and
   lists and when it falls quiet, writes while the namespaces are deleted, the operator process's peak memory
   (VmHWM), its CPU seconds per phase and how soon it exits on SIGTERM; each of issue 13's targets is printed
   with PASS or MISSED. "Quiet" means no request and next to no CPU for 2 s (1 s after create and deletion).

``make bench`` runs it after the proxy benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), *(str(REPO / p) for p in ("operator", "proxy"))]

from cliproxy_operator.render import render  # noqa: E402

PROVIDERS = ("openrouter", "groq", "claude-api-key", "gemini-api-key", "openai-compatibility")
LIMIT = 1024 * 1024


def inputs(routes: int, credentials: int, gateways: int) -> tuple[list[Any], list[Any], dict[str, dict[str, str]]]:
    secrets = {"keys": {f"k{i}": f"sk-{i:06d}-" + "x" * 40 for i in range(credentials)}}
    creds = []
    for i in range(credentials):
        provider = PROVIDERS[i % len(PROVIDERS)]
        spec: dict[str, Any] = {"provider": provider, "apiKeys": [{"secretKeyRef": {"name": "keys", "key": f"k{i}"}}]}
        if provider == "openai-compatibility":
            spec["baseURL"] = f"http://vllm-{i}.internal:8000/v1"
        creds.append({"metadata": {"name": f"cred-{i}", "uid": f"u{i}"}, "spec": spec})
    rows = []
    for i in range(routes):
        models = [{"name": f"vendor/model-{i}-{m}", "alias": f"m{m}"} for m in range(3)]
        refs = [{"name": f"cred-{(i + k) % credentials}", "priority": k} for k in range(2)]
        spec = {"gateway": f"gw-{i % gateways}", "prefix": f"team-{i}", "forceModelPrefix": True,
                "credentials": refs, "models": models, "excludedModels": ["*-preview"]}  # fmt: skip
        rows.append({"metadata": {"name": f"route-{i:04d}", "uid": f"r{i}", "generation": 1}, "spec": spec})
    return rows, creds, secrets


async def operator_at_scale(namespaces: int, routes_per_namespace: int, log: IO[str] | None) -> dict[str, Any]:
    """The operator process against the emulator: the figures of ``tests/operator/scale.py`` and its memory."""
    import kmock
    from tests.operator import scale
    from tests.operator.kube import Cluster, Emulator, emulator_log, setup_emulator, wait_for, write_kubeconfig

    kubeconfig = Path(tempfile.mkdtemp(prefix="cliproxy-bench-")) / "kubeconfig"
    process: asyncio.subprocess.Process | None = None
    peak_kib, exits = 0, []
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        setup_emulator(emulator)
        url = str(server.url).rstrip("/")
        write_kubeconfig(kubeconfig, url)
        async with Cluster("emulator", url, "unused", emulator_log(emulator), emulator=emulator) as cluster:

            async def start() -> None:
                nonlocal process
                since = cluster.mark()
                env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": "bench"}
                process = await asyncio.create_subprocess_exec(
                    str(Path(sys.executable).parent / "cliproxy-operator"), "--all-namespaces", "--log-format",
                    "plain", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log or asyncio.subprocess.DEVNULL,
                )  # fmt: skip
                watched = ("cliproxy.io/v1alpha1/providerroutes", "v1/secrets", "v1/configmaps")
                await wait_for(lambda: all(cluster.watching(r, since=since) for r in watched), 1200)

            async def stop() -> None:
                nonlocal peak_kib
                assert process is not None
                status = await asyncio.to_thread(Path(f"/proc/{process.pid}/status").read_text)
                peak_kib = max(peak_kib, *(int(line.split()[1]) for line in status.splitlines()
                                           if line.startswith("VmHWM:")))  # fmt: skip
                asked = time.monotonic()
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 600)
                exits.append(time.monotonic() - asked)
                say(f"operator exited {exits[-1]:.1f} s after SIGTERM (rc {process.returncode})")

            def cpu() -> float:
                """The operator process's CPU seconds (user and system) so far."""
                assert process is not None
                try:
                    fields = Path(f"/proc/{process.pid}/stat").read_text().rpartition(")")[2].split()
                except FileNotFoundError:
                    return 0.0
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

            def say(text: str) -> None:
                print(f"  [{time.monotonic() - began:6.1f} s] {text}", flush=True)

            began = time.monotonic()
            try:
                figures = await scale.run(cluster, start, stop, namespaces, routes_per_namespace, say=say, cpu=cpu)
            finally:
                if process is not None and process.returncode is None:  # a failed run leaves no operator behind
                    process.kill()
                    await process.wait()
    return {**scale.describe(figures), "peak_memory_mib": round(peak_kib / 1024, 1),
            "sigterm_exit_seconds": [round(e, 1) for e in exits]}  # fmt: skip


def targets(scaled: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """Issue 13's targets: (measure, value, target, met)."""
    lists = scaled["restart_lists"]
    return [
        ("writes per route, create to settled", str(scaled["writes_per_route"]), "<= 3",
         scaled["writes_per_route"] <= 3),
        ("all Ready after the last apply", f"{scaled['ready_seconds']} s", "<= 5 s", scaled["ready_seconds"] <= 5),
        ("restart: writes", str(scaled["restart_writes"]), "0", scaled["restart_writes"] == 0),
        ("restart: lists per kind", str(max(lists.values(), default=0)), "<= 1",
         bool(lists) and max(lists.values()) <= 1),
        ("restart: quiet after process start", f"{scaled['restart_quiet_seconds']} s", "<= 15 s",
         scaled["restart_quiet_seconds"] <= 15),
        ("namespaces deleted: writes", str(scaled["deletion_writes"]), "0", scaled["deletion_writes"] == 0),
        ("namespaces deleted: refused writes", str(scaled["deletion_refused"]), "0", scaled["deletion_refused"] == 0),
        ("peak memory", f"{scaled['peak_memory_mib']} MiB", "<= 200 MiB", scaled["peak_memory_mib"] <= 200),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--credentials", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--namespaces", type=int, default=200, help="operator at scale: namespaces")
    parser.add_argument("--routes-per-namespace", type=int, default=10, help="operator at scale: routes in each")
    parser.add_argument("--operator-log", type=Path, help="append the operator process's log to this file")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "operator.json")
    args = parser.parse_args()
    report: dict[str, Any] = {"routes": args.routes, "credentials": args.credentials, "scenarios": []}
    print(f"render: {args.routes} routes over {args.credentials} credentials, median of {args.runs} runs")
    for gateways in (1, 10):
        routes, creds, secrets = inputs(args.routes, args.credentials, gateways)
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            result = render(routes, creds, secrets)
            times.append(time.perf_counter() - started)
        sizes = [len(g.config_text.encode()) for g in result.gateways.values()]
        payloads = [sum(len(v) for part in g.config_payload.values() for v in part.values())
                    for g in result.gateways.values()]  # fmt: skip
        secret_sizes = [sum(len(v) for v in g.secret_data.values()) for g in result.gateways.values()]
        problems = sum(len(s.problems) for s in result.routes.values())
        row = {"gateways": gateways, "render_ms": round(1000 * statistics.median(times), 1),
               "objects_written": 2 * len(result.gateways), "largest_config_bytes": max(sizes),
               "largest_configmap_bytes": max(payloads), "gzipped": max(payloads) < max(sizes),
               "largest_secret_bytes": max(secret_sizes), "route_problems": problems,
               "fits_1mib": max(payloads) < LIMIT and max(secret_sizes) < LIMIT}  # fmt: skip
        report["scenarios"].append(row)
        print(f"  {gateways:>2} gateway(s): {row['render_ms']:.1f} ms, {row['objects_written']} objects, largest "
              f"config {row['largest_config_bytes'] / 1024:.0f} KiB, in its ConfigMap "
              f"{row['largest_configmap_bytes'] / 1024:.0f} KiB{' gzipped' if row['gzipped'] else ''}, largest Secret "
              f"{row['largest_secret_bytes'] / 1024:.0f} KiB, fits in 1 MiB: {row['fits_1mib']}")  # fmt: skip
        if problems:
            print(f"  unexpected problems: {problems}")
            return 1
    if args.namespaces:
        print(f"operator: {args.namespaces * args.routes_per_namespace} routes in {args.namespaces} namespaces "
              "on the API emulator (requests counted there)")  # fmt: skip
        with args.operator_log.open("a") if args.operator_log else contextlib.nullcontext() as log:
            scaled = report["operator"] = asyncio.run(operator_at_scale(args.namespaces, args.routes_per_namespace,
                                                                        log))  # fmt: skip
        print(f"  operator CPU seconds: {scaled['operator_cpu_seconds']}; exits after SIGTERM in "
              f"{scaled['sigterm_exit_seconds']} s; {scaled['reads_per_route']} reads per route")  # fmt: skip
        verdicts = targets(scaled)
        for name, value, target, ok in verdicts:
            print(f"  {name:<34} {value:<24} target {target:<16} {'PASS' if ok else 'MISSED'}")
        report["operator"]["missed"] = [name for name, _, _, ok in verdicts if not ok]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
