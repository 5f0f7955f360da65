"""Limits on Redis benchmark: what counting each request in a shared redis-server costs, in the same run.

One proxy serves four paths to the demo upstream, all on 127.0.0.1:

- **direct**: wrk → upstream;
- **proxy**: a plain api-key, no limits (no Redis on the way);
- **client limits**: a client key with rpm and tpm (set far above what the run reaches), counted in Redis;
- **+ credential limits**: the same client to a model whose upstream credential has its own rpm and tpm.

It reports the p50 each path adds at 1 connection, the throughput at 32 connections as a ratio of direct, and
Redis' own count of commands per request (``INFO commandstats``). The paths run in turn, in rounds of 1 s each,
and each figure is the median over rounds of the path against direct in the same round: c=1 latency on a shared
machine swings by 2x from one spell to the next, and a spell then falls on every path alike. Run by
``make bench``; ``--quick`` for 3 rounds instead of 8.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

from proxy_bench import ROOT, UPSTREAM_KEY, Run, cpu_seconds, ensure_wrk, free_port, run_wrk, start, wait_ready
from redis import Redis

HUGE = 10**12  # limits no run reaches: every request is counted, none refused
TARGET_ADDED_P50_MS, TARGET_RATIO = 0.5, 0.30


def write_config(tmp: Path, port: int, upstream: int, redis_url: str) -> Path:
    base = f"http://127.0.0.1:{upstream}/v1"
    config = {
        "port": port, "host": "127.0.0.1", "api-keys": ["bench-plain"], "streaming": {"keepalive-seconds": 0},
        "client-keys": [{"name": "bench", "api-key": "bench-limited", "rate-limit": {"rpm": HUGE, "tpm": HUGE}}],
        "redis": {"url": redis_url, "timeout": 1.0},  # what is measured is Redis' path, not on-error's
        "openai-compatibility": [
            {"name": "plain", "base-url": base, "api-key-entries": [{"api-key": UPSTREAM_KEY}],
             "models": [{"name": "demo-small", "alias": "bench-model"}]},
            {"name": "limited", "base-url": base, "api-key-entries": [{"api-key": UPSTREAM_KEY}],
             "models": [{"name": "demo-small", "alias": "bench-limited-model"}],
             "rate-limit": {"rpm": HUGE, "tpm": HUGE}},
        ],
    }  # fmt: skip
    path = tmp / "config.json"
    path.write_text(json.dumps(config))
    return path


def round_trips(redis: Redis) -> int:
    """Scripts Redis has run so far: every limit check and settle is one (and one round trip). commandstats also
    counts the commands a script calls, so only the scripts themselves are summed."""
    stats = redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


def round_trips_per_request(redis: Redis, url: str, key: str, model: str, n: int = 50) -> float:
    """Scripts per request, from ``n`` requests one after the other (wrk's counts miss the ones still in flight)."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    before = settled(redis)
    for _ in range(n):
        with opener.open(urllib.request.Request(url, body, headers), timeout=10) as response:
            response.read()
    return round((settled(redis) - before) / n, 3)


def settled(redis: Redis) -> int:
    """The script count once it stops moving: a loaded proxy still works off wrk's last requests and settles."""
    count = round_trips(redis)
    while True:
        time.sleep(0.5)
        now = round_trips(redis)
        if now == count:
            return count
        count = now


def ping_p50_ms(port: int, n: int = 2000) -> float:
    """A bare round trip to Redis on this machine (PING on a raw socket, p50): the floor a check adds at c=1."""
    times = []
    with socket.create_connection(("127.0.0.1", port)) as connection:
        for _ in range(n):
            started = time.perf_counter()
            connection.sendall(b"PING\r\n")
            connection.recv(64)
            times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 3)


def outages(url: str) -> float:
    """Checks the proxy decided by ``redis.on-error`` so far (a Redis answer slower than ``timeout``)."""
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith("cliproxy_limit_store_unavailable_total"))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=8, help="rounds of 1 s runs (default 8)")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "limits.json")
    args = parser.parse_args()
    rounds = 3 if args.quick else max(1, args.rounds)
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("limits_bench: redis-server is required (`make sysdeps` installs it)")
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    wrk = ["taskset", "-c", "0", ensure_wrk()] if pin else [ensure_wrk()]
    tmp = Path(tempfile.mkdtemp(prefix="limits-bench-"))
    redis_port, up_port, proxy_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        redis_argv = [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                      "--dir", str(tmp)]  # fmt: skip
        procs.append(start(redis_argv, tmp / "redis.log", "0" if pin else None))
        upstream_argv = [sys.executable, "-m", "cliproxy_proxy.demo_upstream", "--host", "127.0.0.1",
                         "--port", str(up_port), "--model", "demo-small", "--key", UPSTREAM_KEY]  # fmt: skip
        procs.append(start(upstream_argv, tmp / "upstream.log", "0" if pin else None))
        config = write_config(tmp, proxy_port, up_port, f"redis://127.0.0.1:{redis_port}/0")
        proxy_argv = [sys.executable, "-m", "cliproxy_proxy", "--config", str(config)]
        procs.append(start(proxy_argv, tmp / "proxy.log", "1" if pin else None))
        wait_ready(procs[1], f"http://127.0.0.1:{up_port}/v1/models", UPSTREAM_KEY, tmp / "upstream.log")
        wait_ready(procs[2], f"http://127.0.0.1:{proxy_port}/readyz", None, tmp / "proxy.log")
        proxy = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
        paths = {
            "direct": (f"http://127.0.0.1:{up_port}/v1/chat/completions", UPSTREAM_KEY, "demo-small"),
            "proxy": (proxy, "bench-plain", "bench-model"),
            "client limits": (proxy, "bench-limited", "bench-model"),
            "+ credential limits": (proxy, "bench-limited", "bench-limited-model"),
        }
        redis = Redis(port=redis_port)
        for url, key, model in paths.values():  # warm-up: pools, imports, the scripts loaded into Redis
            run_wrk(wrk, url, key, model, False, 8, 1, tmp)
        # Rounds of 1 s per path and connection count, the paths in turn: a slow spell of the machine falls on every
        # path alike, and each figure is the median over rounds of a path against direct in the same round.
        runs: dict[str, dict[int, list[Run]]] = {name: {1: [], 32: []} for name in paths}
        cpu = dict.fromkeys(paths, 0.0)
        for _ in range(rounds):
            for name, (url, key, model) in paths.items():
                for conns in (1, 32):
                    spent = cpu_seconds(procs[2].pid)
                    runs[name][conns].append(run_wrk(wrk, url, key, model, False, conns, 1, tmp))
                    if conns == 32:
                        cpu[name] += cpu_seconds(procs[2].pid) - spent
        direct = runs["direct"]
        figures: dict[str, dict[str, float]] = {}
        for name, (url, key, model) in paths.items():
            mine = runs[name]
            added = [run.p50 - base.p50 for run, base in zip(mine[1], direct[1], strict=True)]
            ratios = [run.rps / base.rps for run, base in zip(mine[32], direct[32], strict=True)]
            served = sum(run.requests for run in mine[32])
            per_request = round_trips_per_request(redis, url, key, model)
            figures[name] = {"p50_c1_ms": round(statistics.median(r.p50 for r in mine[1]), 3),
                             "rps_c32": round(statistics.median(r.rps for r in mine[32]), 1),
                             "added_p50_ms": round(statistics.median(added), 3),
                             "ratio_c32": round(statistics.median(ratios), 3),
                             "proxy_cpu_ms_per_request_c32": round(1000 * cpu[name] / max(1, served), 3)
                             if name != "direct" else 0.0,
                             "redis_round_trips_per_request": per_request}  # fmt: skip
            print(f"  {name}: {figures[name]}", flush=True)
        redis.close()
        ping = ping_p50_ms(redis_port)
        decided_by_on_error = outages(f"http://127.0.0.1:{proxy_port}/metrics")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
    print(f"\n{'path':22} {'+p50 ms (c=1)':>14} {'ratio (c=32)':>13} {'proxy CPU ms/req':>17} "
          f"{'Redis round trips/req':>22}")  # fmt: skip
    for name, row in figures.items():
        print(f"{name:22} {row['added_p50_ms']:>+14.3f} {row['ratio_c32']:>13.2f} "
              f"{row['proxy_cpu_ms_per_request_c32']:>17.3f} {row['redis_round_trips_per_request']:>22}")  # fmt: skip
    print(f"checks decided by on-error (Redis slower than its timeout): {decided_by_on_error:.0f}")
    over_proxy = round(figures["client limits"]["p50_c1_ms"] - figures["proxy"]["p50_c1_ms"], 3)
    print(f"client limits over the proxy alone: {over_proxy:+.3f} ms p50 at c=1; a bare Redis PING round trip on "
          f"this machine: {ping:.3f} ms p50")  # fmt: skip
    limited = figures["client limits"]
    missed = limited["added_p50_ms"] > TARGET_ADDED_P50_MS or limited["ratio_c32"] < TARGET_RATIO
    print(f"targets with client limits on Redis: +p50 <= {TARGET_ADDED_P50_MS} ms at c=1, ratio >= {TARGET_RATIO} "
          f"at c=32: {'MISSED' if missed else 'met'}")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {"rounds_of_1s": rounds, "pinned": pin, "figures": figures, "decided_by_on_error": decided_by_on_error,
              "client_limits_over_proxy_p50_ms": over_proxy, "redis_ping_p50_ms": ping,
              "runs": {name: {f"c={c}": [asdict(r) for r in rs] for c, rs in by.items()}
                       for name, by in runs.items()}}  # fmt: skip
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
