"""Shared fixtures: a fake OpenAI-shaped upstream and a proxy served on loopback from a real config file."""

from __future__ import annotations

import os
import tempfile

# The kubernetes client reads $KUBECONFIG when first imported: always a file the operator tests write,
# never a developer's real cluster.
os.environ["KUBECONFIG"] = os.path.join(tempfile.mkdtemp(prefix="cliproxy-kube-"), "kubeconfig")

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import uvloop
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from cliproxy_proxy.__main__ import load_app
from cliproxy_proxy.app import PROXY, Proxy
from cliproxy_proxy.demo_upstream import Upstream, create_demo_app
from cliproxy_proxy.loader import ConfigSource

CLIENT_KEY = "client-key-1"
UPSTREAM_KEYS = frozenset({"key-a", "key-b", "key-c"})
UPSTREAM_MODELS = ("up-small", "up-large", "up-preview", "other-model")


@dataclass
class FakeProvider:
    state: Upstream
    url: str

    @property
    def received(self) -> list[Any]:
        return self.state.received


@dataclass
class RunningProxy:
    app: web.Application
    server: TestServer
    url: str
    config_path: Path

    @property
    def proxy(self) -> Proxy:
        return self.app[PROXY]

    def client(self, key: str = CLIENT_KEY, **options: Any) -> openai.AsyncOpenAI:
        """An SDK client that fails a hung request in a minute (the SDK's own 600 s would stall the suite)."""
        options = {"timeout": 60.0, **options}
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, **options)

    def sync_client(self, key: str = CLIENT_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60.0)

    def rewrite(self, config: dict[str, Any]) -> None:
        write_yaml(self.config_path, config)


def write_yaml(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(document, sort_keys=False))
    tmp.replace(path)


def compat_block(url: str, keys: tuple[str, ...] = ("key-a",), models: Any = (("up-small", "small"),),
                 **extra: Any) -> dict[str, Any]:  # fmt: skip
    """An openai-compatibility entry in front of the fake provider."""
    block: dict[str, Any] = {
        "name": extra.pop("name", "fake"),
        "base-url": url,
        "api-key-entries": [{"api-key": k} for k in keys],
    }
    if models is not None:
        block["models"] = [{"name": n, "alias": a} if a else {"name": n} for n, a in models]
    block.update(extra)
    return block


def base_config(**extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"api-keys": [CLIENT_KEY], "max-retry-interval": 0, "streaming": {"keepalive-seconds": 0}}
    config.update(extra)
    return config


async def eventually(predicate, within: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for a condition the proxy reaches on its own (a reload tick), failing after ``within`` s."""
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on the stock event loop and on uvloop, which the proxy uses in production.

    A test marked ``one_loop`` runs once: what it tests runs in a process of its own, on that process's loop.
    """
    if item.get_closest_marker("one_loop"):
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "one_loop: run an async test on one event loop only (its subject runs elsewhere)"
    )


@pytest.fixture
async def provider(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> FakeProvider:
    state = Upstream(UPSTREAM_MODELS, UPSTREAM_KEYS)
    server = await aiohttp_server(create_demo_app(state))
    return FakeProvider(state, str(server.make_url("/v1")))


@pytest.fixture
def start_proxy(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> Callable[..., Awaitable[RunningProxy]]:
    async def start(config: dict[str, Any], *, secrets_dir: Path | None = None,
                    reload_interval: float = 0.05) -> RunningProxy:  # fmt: skip
        path = tmp_path / "config.yaml"
        write_yaml(path, config)
        app = load_app(ConfigSource(path, secrets_dir), reload_interval)
        server = await aiohttp_server(app)
        return RunningProxy(app, server, str(server.make_url("")).rstrip("/"), path)

    return start
