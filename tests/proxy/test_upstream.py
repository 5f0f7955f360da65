"""The upstream connection pool against raw servers: reuse, stale connections, streaming, timeouts, proxies, TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import pytest
import trustme

from cliproxy_proxy.upstream import HIGH_WATER, Endpoint, Pool, UpstreamError, UpstreamTimeout

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A loopback TCP server whose handler speaks HTTP by hand; counts the connections it accepts."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)  # fmt: skip


async def call(pool: Pool, url: str, body: bytes = b"{}", *, read_timeout: float = 5.0, proxy: str | None = None):  # type: ignore[no-untyped-def]
    endpoint = Endpoint.parse(url, proxy)
    head = endpoint.head("POST", "/chat", {"Authorization": "Bearer k"})
    return await pool.request(endpoint, head, body, connect_timeout=2.0, read_timeout=read_timeout)


async def test_keep_alive_connections_are_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            writer.write(ok(b'{"n":1}'))

    async with RawServer(handler) as server:
        pool = Pool()
        for _ in range(3):
            response = await call(pool, server.url + "/v1", b'{"q":1}')
            assert (response.status, await response.read()) == (200, b'{"n":1}')
            assert response.headers["content-type"] == "application/json"
            response.release()
        pool.close()
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Authorization: Bearer k\r\n" in first and b'Content-Length: 7\r\n\r\n{"q":1}' in first


async def test_a_connection_closed_while_idle_is_replaced_transparently() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(ok(b"{}"))  # answers, keeps the connection nominally alive, then drops it
        await writer.drain()

    async with RawServer(handler) as server:
        pool = Pool()
        for _ in range(3):
            response = await call(pool, server.url)
            await response.read()
            response.release()
            await asyncio.sleep(0.05)  # the server's close reaches the pooled connection
    assert server.connections == 3
    assert len(server.requests) == 3


async def test_connection_close_and_unread_bodies_are_not_pooled() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            writer.write(ok(b"{}", b"Connection: close\r\n") if len(server.requests) == 1 else ok(b"x" * 100))

    async with RawServer(handler) as server:
        pool = Pool()
        response = await call(pool, server.url)
        await response.read()
        response.release()
        assert not pool.idle.get(Endpoint.parse(server.url))
        response = await call(pool, server.url)
        response.release()  # body never read: the connection cannot be reused
        assert not pool.idle.get(Endpoint.parse(server.url))


async def test_chunked_stream_arrives_piece_by_piece() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"d\r\ndata: first\n\n\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"e\r\ndata: second\n\n\r\n0\r\n\r\n")

    async with RawServer(handler) as server:
        response = await call(Pool(), server.url)
        assert await response.readany() == b"data: first\n\n"  # before the server has sent the rest
        release.set()
        assert await response.readany() == b"data: second\n\n"
        assert await response.readany() == b""
        response.release()


async def test_large_bodies_survive_backpressure() -> None:
    payload = bytes(range(256)) * (3 * HIGH_WATER // 256)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(ok(payload))
        await writer.drain()

    async with RawServer(handler) as server:
        response = await call(Pool(), server.url)
        await asyncio.sleep(0.2)  # let the upstream run far ahead of the reader
        assert await response.read() == payload
        response.release()


async def test_a_body_framed_by_connection_close_completes() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()

    async with RawServer(handler) as server:
        response = await call(Pool(), server.url)
        assert await response.read() == b"all of it"
        response.release()


async def test_silence_times_out_and_a_cut_body_raises() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await asyncio.sleep(5)

    async with RawServer(silent) as server:
        with pytest.raises(UpstreamTimeout):
            await call(Pool(), server.url, read_timeout=0.1)

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    async with RawServer(cut) as server:
        response = await call(Pool(), server.url)
        with pytest.raises(UpstreamError, match="closed the connection"):
            await response.read()
        response.release()


async def test_refused_connection_and_garbage_are_upstream_errors() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")

    async with RawServer(garbage) as server:
        with pytest.raises(UpstreamError, match="malformed"):
            await call(Pool(), server.url)
        url = server.url
    with pytest.raises(UpstreamError, match="cannot connect"):
        await call(Pool(), url)


async def test_plain_http_through_a_proxy_uses_the_absolute_form() -> None:
    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(ok(b"{}"))

    async with RawServer(proxy) as server:
        response = await call(Pool(), "http://api.example.test/v1", proxy=server.url.replace("://", "://u%40x:p@"))
        await response.read()
        response.release()
    request = server.requests[0]
    assert request.startswith(b"POST http://api.example.test/v1/chat HTTP/1.1\r\nHost: api.example.test\r\n")
    assert b"Proxy-Authorization: Basic dUB4OnA=\r\n" in request  # u@x:p


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def test_https_directly_and_through_a_connect_tunnel(ca: trustme.CA) -> None:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)

    async def origin_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
            writer.write(ok(b'{"tls":true}'))

    origin = await asyncio.start_server(origin_handler, "127.0.0.1", 0, ssl=server_tls)
    origin_port = origin.sockets[0].getsockname()[1]
    tunnels: list[bytes] = []

    async def connect_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        tunnels.append(head)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", origin_port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer), return_exceptions=True)

    proxy = await asyncio.start_server(connect_proxy, "127.0.0.1", 0)
    proxy_url = f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
    pool = Pool(tls=client_tls)
    try:
        for via in (None, proxy_url, proxy_url):
            response = await call(pool, f"https://localhost:{origin_port}/v1", proxy=via)
            assert await response.read() == b'{"tls":true}'
            response.release()
        assert len(tunnels) == 1 and tunnels[0].startswith(f"CONNECT localhost:{origin_port} HTTP/1.1".encode())
        with pytest.raises(UpstreamError):
            await call(Pool(), f"https://localhost:{origin_port}/v1")  # unknown CA: refused
    finally:
        pool.close()
        origin.close()
        proxy.close()
