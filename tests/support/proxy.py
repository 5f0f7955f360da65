"""The proxy under test and a fake OpenAI-shaped provider: a real config file, served on loopback.

The root ``conftest`` wraps these in the ``provider`` and ``start_proxy`` fixtures; test modules import the
names they need from here, never from another test module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from cliproxy_proxy.__main__ import load_app
from cliproxy_proxy.app import PROXY
from cliproxy_proxy.demo_upstream import Upstream, create_demo_app
from cliproxy_proxy.loader import ConfigSource
from cliproxy_proxy.state import Proxy

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
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    @property
    def proxy(self) -> Proxy:
        return self.app[PROXY]

    def client(self, key: str = CLIENT_KEY, **options: Any) -> openai.AsyncOpenAI:
        """An SDK client that fails a hung request in a minute (the SDK's own 600 s would stall the suite).

        Closed by the ``start_proxy`` fixture on the test's loop. Left to its finalizer, its ``aclose()`` runs on
        whatever loop runs when the garbage collector gets to it: in the suite, one aborted a transport whose
        socket number the running loop had since given to a new listening socket, unregistering the listener, and
        the next request to that server hung.
        """
        options = {"timeout": 60.0, **options}
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, **options)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.close()

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


async def serve_provider(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> FakeProvider:
    """The demo upstream with the test keys and models, on loopback."""
    state = Upstream(UPSTREAM_MODELS, UPSTREAM_KEYS)
    server = await aiohttp_server(create_demo_app(state))
    return FakeProvider(state, str(server.make_url("/v1")))


def proxy_starter(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path, started: list[RunningProxy]
) -> Callable[..., Awaitable[RunningProxy]]:
    """Starts a proxy from a config written to ``tmp_path``, reloading it every ``reload_interval`` s; each one
    started is added to ``started``."""

    async def start(config: dict[str, Any], *, secrets_dir: Path | None = None,
                    reload_interval: float = 0.05) -> RunningProxy:  # fmt: skip
        path = tmp_path / "config.yaml"
        write_yaml(path, config)
        app = load_app(ConfigSource(path, secrets_dir), reload_interval)
        server = await aiohttp_server(app)
        running = RunningProxy(app, server, str(server.make_url("")).rstrip("/"), path)
        started.append(running)
        return running

    return start
