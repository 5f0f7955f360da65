"""Shared fixtures only, wrapping ``tests.support``: a fake OpenAI-shaped upstream and a proxy on loopback."""

from __future__ import annotations

import os
import tempfile

# The kubernetes client reads $KUBECONFIG when first imported: always a file the operator tests write,
# never a developer's real cluster.
os.environ["KUBECONFIG"] = os.path.join(tempfile.mkdtemp(prefix="cliproxy-kube-"), "kubeconfig")

import asyncio
import gc
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


CLOSE_GRACE = 5.0  # seconds the clients a test dropped get to close


@pytest.fixture
async def aiohttp_server(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[Callable[..., Awaitable[TestServer]]]:
    """pytest-aiohttp's fixture, and the SDK clients a test dropped closed on the test's own loop.

    An SDK client nobody closed is closed by its finalizer, which schedules ``aclose()`` on whatever loop runs
    whenever the garbage collector gets to it. In the suite such a late ``aclose()`` aborted a transport whose
    socket number the running loop had since given to a new listening socket, unregistering the listener: the
    next request to that server hung. Collected here, before the servers stop, dropped clients close in time.
    """
    yield aiohttp_server
    running = asyncio.all_tasks()
    gc.collect()
    closing = asyncio.all_tasks() - running  # what the finalizers scheduled, and only that
    if closing:  # bounded: a close that waits on a server gone quiet must not hold the suite
        await asyncio.wait(closing, timeout=CLOSE_GRACE)


@pytest.fixture
async def provider(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> FakeProvider:
    return await serve_provider(aiohttp_server)


@pytest.fixture
def start_proxy(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> Callable[..., Awaitable[RunningProxy]]:
    return proxy_starter(aiohttp_server, tmp_path)
