"""Proxy overhead benchmark: wrk against the demo upstream directly, then through cliproxy, in the same run.

With ``--baseline REF`` (a git revision, ``make bench`` passes ``main``) a second proxy runs that revision's code
on the same config, and each scenario reports this tree's throughput against it: "no slower than before" is
then a ratio measured in one run, not two numbers from different days.

Every request goes to 127.0.0.1 only. Run with ``make bench`` (or ``--quick`` for 2 s runs); results are printed as a
table and written to ``bench/results/proxy.json``. See ``bench/README.md`` for how to read them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import geometric_mean

ROOT = Path(__file__).resolve().parent
UPSTREAM_KEY, CLIENT_KEY = "bench-upstream", "bench-client"
PROMPT = " ".join(f"word{i}" for i in range(20))  # ~20 words: one SSE event each, ~25 events per stream
LUA = """wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status < 300 and not string.find(body, [==[{marker}]==], 1, true) then bad = bad + 1 end
end
function done(s, lat, req)
  local b = 0
  for _, t in ipairs(threads) do b = b + t:get("bad") end
  local e = s.errors
  io.write(string.format("BENCH %d %d %d %d %d %d %d %d %d %d %d\\n", s.requests, s.duration,
    lat:percentile(50), lat:percentile(90), lat:percentile(99), e.connect, e.read, e.write, e.timeout, e.status, b))
end
"""
# Stripped from the children's environment so nothing is routed off the loopback interface.
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@dataclass
class Run:
    """One wrk run, parsed from the summary line that the Lua ``done`` hook prints. Latencies are in ms."""

    rps: float
    requests: int
    p50: float
    p90: float
    p99: float
    errors: dict[str, int]


def ensure_wrk() -> str:
    """Return wrk's path, installing Debian's package if it is missing; exit non-zero if that fails."""
    if path := shutil.which("wrk"):
        return path
    print("wrk not found: trying apt-get install -y wrk", flush=True)
    for step in (["apt-get", "install", "-y", "wrk"], ["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        if shutil.which("apt-get") is None:
            break
        subprocess.run(step, stdout=subprocess.DEVNULL, check=False)
        if path := shutil.which("wrk"):
            return path
    sys.exit("proxy_bench: wrk is required (apt-get install wrk) and could not be installed")


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_ok(url: str, key: str | None = None) -> bool:
    """True when a GET to ``url`` answers 200."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_ready(proc: subprocess.Popen[bytes], url: str, key: str | None, log: Path, timeout: float = 20.0) -> None:
    """Poll ``url`` until it answers 200; exit with the child's log if it dies or never gets ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if get_ok(url, key):
            return
        time.sleep(0.1)
    sys.exit(f"proxy_bench: {url} never got ready; log {log}:\n{log.read_text()[-3000:]}")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in KiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time that ``pid`` has used so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(wrk: list[str], url: str, key: str, model: str, stream: bool, conns: int, secs: int, tmp: Path) -> Run:
    """Run wrk (``wrk`` is its command, taskset included) once with a POST chat completion; parse its summary."""
    body = json.dumps({"model": model, "stream": stream, "messages": [{"role": "user", "content": PROMPT}]})
    script = tmp / f"{model}-{stream}.lua"
    script.write_text(LUA.format(body=body, key=key, marker="[DONE]" if stream else '"choices"'))
    argv = [*wrk, "-t1", f"-c{conns}", f"-d{secs}s", "--timeout", "10s", "--latency", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    line = next((row for row in out.stdout.splitlines() if row.startswith("BENCH ")), None)
    if out.returncode != 0 or line is None:
        sys.exit(f"proxy_bench: wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    n, dur, p50, p90, p99, *errs = (int(v) for v in line.split()[1:])
    names = ("connect", "read", "write", "timeout", "non_2xx", "bad_body")
    return Run(round(n / (dur / 1e6), 1), n, p50 / 1000, p90 / 1000, p99 / 1000, dict(zip(names, errs, strict=True)))


def write_config(tmp: Path, proxy_port: int, upstream_port: int) -> Path:
    """The proxy's config: one OpenAI-compatible block over the demo upstream, streaming keepalives off."""
    path = tmp / "config.yaml"
    path.write_text(
        f"port: {proxy_port}\nhost: 127.0.0.1\napi-keys: [{CLIENT_KEY}]\nstreaming: {{keepalive-seconds: 0}}\n"
        "openai-compatibility:\n  - name: bench\n"
        f"    base-url: http://127.0.0.1:{upstream_port}/v1\n"
        f"    api-key-entries: [{{api-key: {UPSTREAM_KEY}}}]\n"
        "    models: [{name: demo-small, alias: bench-model}]\n"
        "claude-api-key:\n"
        f"  - api-key: {UPSTREAM_KEY}\n"
        f"    base-url: http://127.0.0.1:{upstream_port}\n"
        "    models: [{name: demo-small, alias: bench-claude}]\n"
    )
    return path


async def _first_bytes(url: str, key: str, model: str, n: int, concurrency: int) -> dict[str, float]:
    """Streams ``n`` chat completions, ``concurrency`` at a time; time to the first data event and to the end."""
    import aiohttp  # the project's own dependency; only this measurement needs a client that sees single events

    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
    first: list[float] = []
    whole: list[float] = []
    events: list[int] = []
    queue = list(range(n))

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            queue.pop()
            started = time.perf_counter()
            async with session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as response:
                count = 0
                async for line in response.content:
                    if line.startswith(b"data:"):
                        if count == 0:
                            first.append(time.perf_counter() - started)
                        count += 1
                whole.append(time.perf_counter() - started)
                events.append(count)

    async with aiohttp.ClientSession(trust_env=False) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    first.sort()
    whole.sort()

    def pct(values: list[float], q: float) -> float:
        return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 3)

    return {"ttft_p50_ms": pct(first, 0.5), "ttft_p99_ms": pct(first, 0.99), "stream_p50_ms": pct(whole, 0.5),
            "events": round(sum(events) / len(events), 1)}  # fmt: skip


def baseline_tree(ref: str, tmp: Path) -> Path:
    """The proxy package of git revision ``ref``, unpacked under ``tmp``: what PYTHONPATH points the baseline at."""
    target = tmp / "baseline"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT.parent), "archive", ref, "proxy"], capture_output=True, check=False)
    if archive.returncode != 0:
        sys.exit(f"proxy_bench: cannot read {ref!r} from git: {archive.stderr.decode()[-500:]}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target / "proxy"


def start(argv: list[str], log: Path, cpu: str | None, path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a child with output to ``log``, pinned to ``cpu`` with taskset when given, importing from ``path``."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    if path is not None:
        env["PYTHONPATH"] = str(path)  # ahead of the editable install: the baseline's own code
    pinned = ["taskset", "-c", cpu, *argv] if cpu is not None else argv
    with log.open("wb") as out:
        return subprocess.Popen(pinned, stdout=out, stderr=subprocess.STDOUT, env=env)


def table(results: list[dict[str, object]]) -> str:
    """The human-readable report."""
    head = ("scenario", "direct rps", "proxy rps", "ratio", "direct p50/p99", "proxy p50/p99", "+p50 ms", "+p99 ms",
            "cpu% up/proxy")  # fmt: skip
    rows = [head]
    for r in results:
        d, p, cpu = r["direct"], r["proxy"], r["cpu_percent"]
        assert isinstance(d, dict) and isinstance(p, dict) and isinstance(cpu, dict)
        rows.append((str(r["scenario"]), f"{d['rps']:.0f}", f"{p['rps']:.0f}", f"{r['ratio']:.2f}",
                     f"{d['p50']:.2f}/{d['p99']:.2f}", f"{p['p50']:.2f}/{p['p99']:.2f}",
                     f"{r['added_p50_ms']:+.2f}", f"{r['added_p99_ms']:+.2f}",
                     f"{cpu['proxy']['upstream']}/{cpu['proxy']['proxy']}"))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]  # fmt: skip
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    parser.add_argument("--quick", action="store_true", help="2 s runs")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 8, 64],
        help="wrk connections (default 1 8 64: c=1 shows the added latency, 64 the throughput)",
    )
    parser.add_argument("--no-pin", action="store_true", help="no taskset (default: wrk+upstream core 0, proxy 1)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the children's logs and wrk scripts")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "proxy.json")
    parser.add_argument("--baseline", metavar="REF", help="also run git revision REF's proxy, compared per scenario")
    args = parser.parse_args()
    secs = 2 if args.quick else max(1, args.duration)
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    wrk = ["taskset", "-c", "0", ensure_wrk()] if pin else [ensure_wrk()]
    tmp = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    up_port, proxy_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream_argv = [sys.executable, "-m", "cliproxy_proxy.demo_upstream", "--host", "127.0.0.1",
                         "--port", str(up_port), "--model", "demo-small", "--key", UPSTREAM_KEY]  # fmt: skip
        procs.append(start(upstream_argv, tmp / "upstream.log", "0" if pin else None))
        config = write_config(tmp, proxy_port, up_port)
        proxy_argv = [sys.executable, "-m", "cliproxy_proxy", "--config", str(config), "--host", "127.0.0.1",
                      "--port", str(proxy_port)]  # fmt: skip
        procs.append(start(proxy_argv, tmp / "proxy.log", "1" if pin else None))
        upstream, proxy = procs[0], procs[1]
        wait_ready(upstream, f"http://127.0.0.1:{up_port}/v1/models", UPSTREAM_KEY, tmp / "upstream.log")
        wait_ready(proxy, f"http://127.0.0.1:{proxy_port}/readyz", None, tmp / "proxy.log")
        children = {"upstream": upstream, "proxy": proxy}
        paths = {
            "direct": (f"http://127.0.0.1:{up_port}/v1/chat/completions", UPSTREAM_KEY, "demo-small"),
            "proxy": (f"http://127.0.0.1:{proxy_port}/v1/chat/completions", CLIENT_KEY, "bench-model"),
        }
        if args.baseline:
            base_port = free_port()
            base_argv = [*proxy_argv[:-1], str(base_port)]
            base = start(base_argv, tmp / "baseline.log", "1" if pin else None, baseline_tree(args.baseline, tmp))
            procs.append(base)
            wait_ready(base, f"http://127.0.0.1:{base_port}/readyz", None, tmp / "baseline.log")
            children["baseline"] = base
            paths["baseline"] = (f"http://127.0.0.1:{base_port}/v1/chat/completions", CLIENT_KEY, "bench-model")
        print(f"wrk {secs}s per run, -t1; upstream pid {upstream.pid}, proxy pid {proxy.pid}, pinned: {pin}")
        failures: list[str] = []
        for stream in (False, True):  # warm-up: connection pools, imports, caches
            for path, (url, key, model) in paths.items():
                warm = run_wrk(wrk, url, key, model, stream, 8, 1, tmp)
                failures += [f"warm-up {path}: {warm.errors}"] if any(warm.errors.values()) else []
        mem_warm = memory_kib(proxy.pid)
        results: list[dict[str, object]] = []
        for stream in (False, True):
            for conns in args.concurrency:
                name = f"{'stream' if stream else 'plain'} c={conns}"
                runs, cpu, cpu_ms = {}, {}, {}
                for path, target in paths.items():
                    before, started = {n: cpu_seconds(c.pid) for n, c in children.items()}, time.monotonic()
                    runs[path] = run_wrk(wrk, *target, stream, conns, secs, tmp)
                    wall = time.monotonic() - started
                    used = {n: cpu_seconds(c.pid) - before[n] for n, c in children.items()}
                    cpu[path] = {n: round(100 * seconds / wall) for n, seconds in used.items()}
                    if path in children:  # the proxy's (or the baseline's) own CPU per request: its work, not the wait
                        cpu_ms[path] = round(1000 * used[path] / max(1, runs[path].requests), 4)
                d, p = runs["direct"], runs["proxy"]
                failures += [f"{name} {path}: {run.errors}" for path, run in runs.items() if any(run.errors.values())]
                print(f"  {name}: direct {d.rps:.0f} rps, proxy {p.rps:.0f} rps", flush=True)
                result = {"scenario": name, "stream": stream, "connections": conns,
                          "direct": asdict(d), "proxy": asdict(p), "cpu_percent": cpu,
                          "ratio": round(p.rps / d.rps, 3) if d.rps else 0.0,
                          "added_p50_ms": round(p.p50 - d.p50, 3),
                          "added_p99_ms": round(p.p99 - d.p99, 3), "cpu_ms_per_request": cpu_ms}  # fmt: skip
                if "baseline" in runs:
                    b = runs["baseline"]
                    result["baseline"] = asdict(b)
                    result["vs_baseline"] = round(p.rps / b.rps, 3) if b.rps else 0.0
                    mine, theirs = cpu_ms["proxy"], cpu_ms["baseline"]
                    result["cpu_vs_baseline"] = round(mine / theirs, 3) if theirs else 0.0
                    print(f"    baseline {args.baseline}: {b.rps:.0f} rps; this tree / it {result['vs_baseline']:.2f}; "
                          f"CPU per request {cpu_ms['proxy']:.3f} / {cpu_ms['baseline']:.3f} ms")  # fmt: skip
                results.append(result)
        ttft = {}
        streams = {"direct": paths["direct"], "pass-through": paths["proxy"],
                   "to Claude": (paths["proxy"][0], CLIENT_KEY, "bench-claude")}  # fmt: skip
        for name, (url, key, model) in streams.items():
            ttft[name] = asyncio.run(_first_bytes(url, key, model, 100 if args.quick else 400, 4))
        translation = {
            "added_ttft_p50_ms": round(ttft["to Claude"]["ttft_p50_ms"] - ttft["pass-through"]["ttft_p50_ms"], 3),
            "per_event_overhead_ms": round(
                (ttft["to Claude"]["stream_p50_ms"] - ttft["pass-through"]["stream_p50_ms"])
                / max(1.0, ttft["to Claude"]["events"]), 4),
        }  # fmt: skip
        mem_end = memory_kib(proxy.pid)
        alive = proxy.poll() is None and upstream.poll() is None
        log_problems = [
            row for row in (tmp / "proxy.log").read_text().splitlines() if " ERROR " in row or "Trace" in row
        ]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print()
    print(table(results))
    if args.baseline:
        print()
        for key, what in (("vs_baseline", "throughput"), ("cpu_vs_baseline", "CPU per request (lower: cheaper)")):
            ratios = [float(str(r[key])) for r in results]
            print(f"this tree against {args.baseline}, same run: {what} ratio per scenario "
                  f"{', '.join(f'{v:.2f}' for v in ratios)} (geometric mean {geometric_mean(ratios):.3f})")  # fmt: skip
    print(f"\nproxy memory: after warm-up RSS {mem_warm['VmRSS'] / 1024:.1f} MiB (peak {mem_warm['VmHWM'] / 1024:.1f});"
          f" at end RSS {mem_end['VmRSS'] / 1024:.1f} MiB (peak {mem_end['VmHWM'] / 1024:.1f})")  # fmt: skip
    print(f"note: wrk, upstream{' (both core 0)' if pin else ''} and proxy{' (core 1)' if pin else ''} share "
          f"{os.cpu_count()} cores: compare ratios and added latency, not absolute rps.")  # fmt: skip
    print("\nstreams at 4 connections, time to the first data event and to the end (ms):")
    for name, figures in ttft.items():
        print(f"  {name:13} ttft p50 {figures['ttft_p50_ms']:7.2f}  p99 {figures['ttft_p99_ms']:7.2f}  "
              f"stream p50 {figures['stream_p50_ms']:7.2f}  ({figures['events']:.0f} events)")  # fmt: skip
    print(
        f"  translation to Claude adds {translation['added_ttft_p50_ms']:+.2f} ms to the first token (p50) and "
        f"{translation['per_event_overhead_ms']:+.4f} ms per event against the pass-through path"
    )
    failures += [f"proxy log: {row[:300]}" for row in log_problems[:5]]
    failures += [] if alive else ["the upstream or the proxy died during the run"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {"baseline": args.baseline,
              "duration_s": secs, "pinned": pin, "cpus": os.cpu_count(), "wrk_threads": 1, "prompt_words": 20,
              "proxy_memory_kib": {"after_warmup": mem_warm, "end": mem_end}, "scenarios": results,
              "streams_first_token": ttft, "translation_to_claude": translation,
              "failures": failures, "processes_alive_at_end": alive,
              "proxy_log_error_lines": len(log_problems)}  # fmt: skip
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    if failures or args.keep_logs:
        print(f"logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("FAILED: errors during the benchmark:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
