"""Resource bounds: Retry-After, slow clients, clients that leave, and the memory a large body costs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from cliproxy_proxy.__main__ import load_app, server_options
from cliproxy_proxy.app import PROXY
from cliproxy_proxy.demo_upstream import Fault
from cliproxy_proxy.forward import retry_after_seconds
from cliproxy_proxy.loader import ConfigSource
from cliproxy_proxy.translate import codec_for_path

from ..support.proxy import CLIENT_KEY, FakeProvider, base_config, compat_block, eventually, write_yaml

MESSAGES = [{"role": "user", "content": "ping"}]


@pytest.mark.parametrize(
    ("header", "expected"),
    [("100000000", 1800.0), ("inf", 1800.0), ("1e400", 1800.0), ("-5", 0.0), ("nan", None), ("soon", None),
     ("Fri, 31 Dec 9999 23:59:59 GMT", 1800.0), ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0), ("12.5", 12.5)],
)  # fmt: skip
def test_retry_after_is_capped(header: str, expected: float | None) -> None:
    assert retry_after_seconds(header, 1800.0) == expected


async def test_a_huge_retry_after_benches_a_credential_no_longer_than_quota_max(
    provider: FakeProvider, start_proxy
) -> None:
    block = compat_block(provider.url, keys=("key-a",))
    running = await start_proxy(base_config(**{"openai-compatibility": [block], "cooldowns": {"quota-max": 120}}))
    provider.state.fail_next("key-a", Fault(status=429, headers={"Retry-After": "100000000"}))
    with pytest.raises(openai.RateLimitError) as caught:
        await running.client().chat.completions.create(model="small", messages=MESSAGES)
    assert caught.value.response.headers["Retry-After"] == "120"
    health = running.proxy.health
    (cooldown,) = health.cooldowns.values()
    assert 0 < cooldown.until - health.clock() <= 120


# -- the listener as production runs it -------------------------------------------------------------------


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[[dict[str, Any]], Awaitable[tuple[web.Application, int]]]]:
    """The proxy behind the listener options ``cliproxy-proxy`` runs it with (``server_options``)."""
    runners: list[web.AppRunner] = []

    async def start(config: dict[str, Any]) -> tuple[web.Application, int]:
        path = tmp_path / "config.yaml"
        write_yaml(path, config)
        app = load_app(ConfigSource(path), 1.0)
        runner = web.AppRunner(app, **server_options(app[PROXY].runtime.config))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return app, runner.addresses[0][1]

    yield start
    for runner in runners:
        await runner.cleanup()


class SilentUpstream:
    """Reads a request and never answers; notes when the proxy hangs up on it."""

    def __init__(self) -> None:
        self.received = asyncio.Event()
        self.hung_up = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.received.set()
        while await reader.read(65536):
            pass
        self.hung_up.set()
        writer.close()


async def _closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the proxy sends until it closes the connection (the safety bound only stops a hung test)."""
    async with asyncio.timeout(20):
        return await reader.read()


async def test_slow_headers_are_cut_off(serve) -> None:  # type: ignore[no-untyped-def]
    _, port = await serve(base_config(**{"client-timeouts": {"headers": 0.3}}))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    async def trickle() -> None:  # a byte at a time does not keep the connection open
        with contextlib.suppress(ConnectionError):
            for _ in range(400):
                writer.write(b"X")
                await asyncio.sleep(0.05)

    dripping = asyncio.create_task(trickle())
    assert await _closed(reader) == b""
    dripping.cancel()
    writer.close()


async def test_a_slow_body_gets_a_408_and_the_connection_closes(serve) -> None:  # type: ignore[no-untyped-def]
    _, port = await serve(base_config(**{"client-timeouts": {"body": 0.3}}))
    for path in ("/v1/messages", "/v1/chat/completions"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":".encode())  # fmt: skip
        head, _, body = (await _closed(reader)).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        expected = codec_for_path(path).encode_error(408, "The request body did not arrive in time.", "request_timeout")
        assert body == expected
        writer.close()


async def test_a_client_that_leaves_cancels_the_upstream_call(serve) -> None:  # type: ignore[no-untyped-def]
    upstream = SilentUpstream()
    async with upstream as url:
        app, port = await serve(base_config(**{"openai-compatibility": [compat_block(url)]}))
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        body = orjson.dumps({"model": "small", "messages": MESSAGES})
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
        writer.write(head.encode() + body)
        async with asyncio.timeout(20):
            await upstream.received.wait()
        writer.close()  # the client gives up on a non-streaming answer
        async with asyncio.timeout(20):
            await upstream.hung_up.wait()
        metrics = app[PROXY].metrics
        await eventually(lambda: metrics.summary("fake")["in_flight"] == 0)
        assert metrics.errors.labels("fake", "client_closed")._value.get() == 1


# -- memory -----------------------------------------------------------------------------------------------


def _reset_peak_rss() -> int:
    """Restart the peak (VmHWM) from what is resident now, and return that."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return _rss("VmRSS")


def _rss(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field))


class DiscardingUpstream(SilentUpstream):
    """Reads a request body away without keeping it, and answers a small completion."""

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        while length > 0:
            length -= len(await reader.read(min(length, 65536)))
        answer = orjson.dumps({"id": "c", "object": "chat.completion", "model": "up", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})  # fmt: skip
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(answer), answer))  # fmt: skip
        await writer.drain()
        writer.close()


def _post(port: int, request: bytes) -> bytes:
    """A blocking client in a thread: it sends from the caller's buffer, allocating nothing of its own."""
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(request)
        return client.recv(65536)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
@pytest.mark.parametrize("alias", [None, "small"])
async def test_a_large_body_costs_under_three_times_its_size(serve, alias: str | None) -> None:  # type: ignore[no-untyped-def]
    async with DiscardingUpstream() as url:
        model = (("up", alias),) if alias else (("small", None),)  # an alias re-encodes the body for the upstream
        _, port = await serve(base_config(**{"openai-compatibility": [compat_block(url, models=model)]}))
        payload = orjson.dumps({"model": "small", "messages": [{"role": "user", "content": "a" * (24 << 20)}]})
        request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
                   ).encode() + payload  # fmt: skip
        del payload
        gc.collect()
        before = _reset_peak_rss()
        answer = await asyncio.to_thread(_post, port, request)
        peak = _rss("VmHWM") - before
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert peak < 3.2 * len(request), f"peak {peak / len(request):.2f} x the body"


async def test_the_access_log_redacts_keys_in_the_query(serve, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    _, port = await serve(base_config())
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    for query in (f"key={CLIENT_KEY}", f"alt=sse&key={CLIENT_KEY}", f"auth_token={CLIENT_KEY}&access_token=t0k"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /v1/models?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        assert (await _closed(reader)).startswith(b"HTTP/1.1 200 ")  # the key in the query was accepted
        writer.close()
    await eventually(lambda: len([r for r in caplog.records if r.name == "aiohttp.access"]) == 3)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/v1/models?key=REDACTED" in logged and "alt=sse&key=REDACTED" in logged
    assert CLIENT_KEY not in logged and "t0k" not in logged
