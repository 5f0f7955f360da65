"""Shared fixtures only, wrapping ``tests.support``: a fake OpenAI-shaped upstream and a proxy on loopback."""

from __future__ import annotations

import os
import tempfile

# The kubernetes client reads $KUBECONFIG when first imported: always a file the operator tests write,
# never a developer's real cluster.
os.environ["KUBECONFIG"] = os.path.join(tempfile.mkdtemp(prefix="cliproxy-kube-"), "kubeconfig")

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import uvloop
from aiohttp.test_utils import TestServer

from tests.support.proxy import FakeProvider, RunningProxy, proxy_starter, serve_provider


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
    return await serve_provider(aiohttp_server)


@pytest.fixture
async def start_proxy(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[RunningProxy]]]:
    started: list[RunningProxy] = []
    yield proxy_starter(aiohttp_server, tmp_path, started)
    for running in started:  # the SDK clients they handed out, closed on this test's loop
        await running.close()
