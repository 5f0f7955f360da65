"""Three real ``cliproxy-proxy`` processes share one real redis-server: one limit holds across all of them.

The processes (and the demo upstream they call) start once for the module, and each test drives them from an
empty Redis. The tests are synchronous (the SDK's sync client on threads): the gateways run their own loops, so
the suite's second run on uvloop would measure nothing new.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest
import yaml
from redis import Redis

from ..support.redis_server import RedisServer, free_port

UPSTREAM_KEY = "upstream-key"
CLIENTS = {"rpm-team": {"rate-limit": {"rpm": 120}}, "tpm-team": {"rate-limit": {"tpm": 40}},
           "budget-team": {"budget": {"tokens": 40, "per": "day"}}}  # fmt: skip
GUARD = 30.0  # seconds: a request slower than this hangs


@dataclass
class Gateways:
    redis: RedisServer
    urls: list[str]
    clients: dict[tuple[int, str], openai.OpenAI] = field(default_factory=dict)

    def client(self, index: int, name: str) -> openai.OpenAI:
        """The SDK client of ``name``'s key on gateway ``index % 3`` (one each, kept: a client is slow to make)."""
        key = (index % 3, name)
        if key not in self.clients:
            self.clients[key] = openai.OpenAI(base_url=f"{self.urls[key[0]]}/v1", api_key=f"{name}-key",
                                              max_retries=0, timeout=GUARD)  # fmt: skip
        return self.clients[key]


def _ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until ``url`` answers 200 (the upstream's model list needs its key), failing with the child's log."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {UPSTREAM_KEY}"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            with opener.open(request, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url} never got ready: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    tmp = tmp_path_factory.mktemp("gateways")
    redis = RedisServer(tmp)
    redis.start()
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    upstream_port, ports = free_port(), [free_port() for _ in range(3)]
    config = {
        "client-keys": [{"name": name, "api-key": f"{name}-key", **limits} for name, limits in CLIENTS.items()],
        "redis": {"url": redis.url, "timeout": 5.0},  # a loaded box stalls loops: the bound, not a speed
        "openai-compatibility": [{"name": "demo", "base-url": f"http://127.0.0.1:{upstream_port}/v1",
                                  "api-key-entries": [{"api-key": UPSTREAM_KEY}],
                                  "models": [{"name": "demo-small", "alias": "small"}]}],
    }  # fmt: skip
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    bin_dir = Path(sys.executable).parent
    commands = [[str(bin_dir / "cliproxy-demo-upstream"), "--port", str(upstream_port), "--model", "demo-small",
                 "--key", UPSTREAM_KEY]]  # fmt: skip
    commands += [[str(bin_dir / "cliproxy-proxy"), "--config", str(tmp / "config.yaml"), "--host", "127.0.0.1",
                  "--port", str(port)] for port in ports]  # fmt: skip
    processes = []
    try:
        for i, command in enumerate(commands):
            with (tmp / f"{i}.log").open("wb") as log:
                processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
        _ready(f"http://127.0.0.1:{upstream_port}/v1/models", processes[0], tmp / "0.log")
        for i, port in enumerate(ports, 1):
            _ready(f"http://127.0.0.1:{port}/readyz", processes[i], tmp / f"{i}.log")
        yield Gateways(redis, [f"http://127.0.0.1:{port}" for port in ports])
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        redis.kill()


@pytest.fixture
def gateway(gateways: Gateways) -> Gateways:
    """The gateways, from an empty Redis."""
    with Redis.from_url(gateways.redis.url) as redis:
        redis.flushall()
    return gateways


def ask(client: openai.OpenAI) -> int | openai.RateLimitError:
    """One chat request: its total tokens, or the 429 the SDK raised (the client's timeout bounds a hang)."""
    try:
        answer = client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}])
    except openai.RateLimitError as refused:
        return refused
    assert answer.usage is not None
    return answer.usage.total_tokens


def test_rpm_120_driven_at_twice_that_across_three_processes(gateway: Gateways) -> None:
    clients = [gateway.client(i, "rpm-team") for i in range(3)]
    with ThreadPoolExecutor(24) as pool:
        outcomes = list(pool.map(ask, (clients[i % 3] for i in range(240))))
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    assert 118 <= len(outcomes) - len(refused) <= 122  # 120 ± 2 %; one atomic script per admission makes it 120
    for refusal in refused:
        assert refusal.code == "rate_limit_exceeded" and "rpm" in refusal.message
        assert 1 <= int(refusal.response.headers["Retry-After"]) <= 60


def counted(redis: Redis, name: str, limit: str) -> int:
    """The tokens Redis holds for a client's limit: its tpm window's sum over the minute, or its budget period."""
    if limit == "tpm":
        return int(redis.hget(f"cliproxy:{{{name}}}:tpm", "sum") or 0)
    return sum(int(redis.get(key) or 0) for key in redis.keys(f"cliproxy:{{{name}}}:budget:*"))


@pytest.mark.parametrize(("name", "limit"), [("tpm-team", "tpm"), ("budget-team", "budget")])
def test_tpm_and_budget_hold_across_three_processes(gateway: Gateways, name: str, limit: str) -> None:
    spent, accepted = 0, 0
    with Redis.from_url(gateway.redis.url) as redis:
        for i in range(100):
            outcome = ask(gateway.client(i, name))  # each request on the next process
            if isinstance(outcome, openai.RateLimitError):
                break
            spent, accepted = spent + outcome, accepted + 1
            for _ in range(400):  # its tokens settle after the answer: wait until Redis holds them
                if counted(redis, name, limit) >= spent:
                    break
                time.sleep(0.025)
    assert isinstance(outcome, openai.RateLimitError) and limit in outcome.message
    assert accepted == math.ceil(40 / (spent / accepted))  # each process saw the others' tokens, none ran over
