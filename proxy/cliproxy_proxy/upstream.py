"""A pooled HTTP/1.1 client for upstream calls: asyncio transports, httptools' parser, nothing else.

The proxy's hot path is one request out and one response back per client request. aiohttp's client spends
most of the proxy's CPU on generality this path never uses (cookies, redirects, tracing, decompression);
this pool writes a precomputed request head and hands the body over chunk by chunk as it is parsed.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import httptools

from .config import CONTROL_CHARACTERS

IDLE_SECONDS = 30.0  # a pooled connection older than this is closed rather than reused
HIGH_WATER = 1 << 20  # stop reading from an upstream that is this far ahead of its client
WRITE_SLICE = 1 << 20  # a request body goes out in slices this large, each once the socket took the last


class UpstreamError(Exception):
    """The upstream could not be reached or broke off; says nothing secret."""


class UnsafeRequest(UpstreamError):
    """A request head that would carry CR/LF or another control character: smuggling, never sent."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The upstream stayed silent longer than allowed."""


@cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a URL's requests go: the origin, the path prefix, and the proxy in between (if any)."""

    scheme: str
    host: str
    port: int
    base_path: str
    proxy: tuple[str, int, str | None] | None = None

    @classmethod
    def parse(cls, url: str, proxy: str | None = None) -> Endpoint:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        via = None
        if proxy:
            p = urlsplit(proxy)
            auth = None
            if p.username is not None:
                raw = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
                auth = "Basic " + base64.b64encode(raw).decode()
            via = (p.hostname or "", p.port or 80, auth)
        return cls(parts.scheme, parts.hostname or "", port, parts.path.rstrip("/"), via)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"

    def head(self, method: str, path: str, headers: Mapping[str, str]) -> bytes:
        """The request line and headers, all but Content-Length: computed once per credential and path."""
        target = self.base_path + path
        if self.proxy is not None and self.scheme == "http":
            target = f"http://{self.host_header}{target}"  # a plain HTTP proxy takes the absolute form
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}", "Accept-Encoding: identity"]
        if self.proxy is not None and self.proxy[2] and self.scheme == "http":
            lines.append(f"Proxy-Authorization: {self.proxy[2]}")
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        if CONTROL_CHARACTERS.search(
            "".join(lines)
        ):  # a head is built once per credential and path, or per session token
            raise UnsafeRequest("a header or path held a control character (CR, LF, NUL...): not sent")
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")


class Response:
    """An upstream response: status and headers now, the body as it arrives."""

    __slots__ = ("_conn", "headers", "status")

    def __init__(self, conn: _Connection, status: int, headers: dict[str, str]) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers  # names lower-cased

    async def readany(self) -> bytes:
        """The next piece of the body, ``b""`` once it is complete."""
        return await self._conn.next_chunk()

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Give the connection back when the body was read to its end, close it otherwise."""
        self._conn.finish()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; httptools calls back as the response is parsed."""

    def __init__(self, pool: Pool, key: Endpoint) -> None:
        self.pool = pool
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.used_at = time.monotonic()
        self.reused = False
        self.read_timeout: float | None = None
        self.writable: asyncio.Future[None] | None = None  # set while the transport's write buffer is full
        self._reset()

    def _reset(self) -> None:
        self.headers: dict[str, str] = {}
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.until_close = False
        self.paused = False
        self.received = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.head: asyncio.Future[Response] = self.loop.create_future()

    # -- asyncio.Protocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(UpstreamError("the upstream sent a malformed HTTP response"))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.resume_writing()
        if self.until_close and exc is None:
            self.complete = True  # a body without length or chunking ends where the connection does
            self._wake()
        elif not self.complete:
            self._fail(UpstreamError("the upstream closed the connection"))

    # -- httptools callbacks -----------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once the message is complete
        framed = "content-length" in self.headers or "chunked" in self.headers.get("transfer-encoding", "")
        self.until_close = not framed and self.parser.get_status_code() not in (204, 304)
        if not self.head.done():
            self.head.set_result(Response(self, self.parser.get_status_code(), self.headers))

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and self.transport is not None and not self.paused:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- the caller's side -------------------------------------------------------------------------------

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self.error = error
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: a caller that already gave up must not leave it unlogged
        self._wake()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _on_timeout(self) -> None:
        self._fail(UpstreamTimeout(f"the upstream sent nothing for {self.read_timeout:g} s"))
        self._close()

    async def _within_read_timeout(self, future: asyncio.Future[Any]) -> None:
        timer = self.loop.call_later(self.read_timeout, self._on_timeout) if self.read_timeout else None
        try:
            await future
        finally:
            if timer is not None:
                timer.cancel()

    def pause_writing(self) -> None:
        self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    async def send(self, head: bytes, body: bytes | bytearray, read_timeout: float | None) -> Response:
        """Write the request, the body slice by slice as the socket drains (never one more copy of a large body)."""
        self.read_timeout = read_timeout
        try:
            view = memoryview(body)
            self._write(head + b"Content-Length: %d\r\n\r\n" % len(body), view[:WRITE_SLICE])  # one syscall
            for start in range(0, len(view), WRITE_SLICE):
                if start:
                    self._write(view[start : start + WRITE_SLICE])
                if self.writable is not None:
                    await self._within_read_timeout(self.writable)
            await self._within_read_timeout(self.head)
        except asyncio.CancelledError:
            self._close()  # nobody will read this response: do not leave it half-done in the pool
            raise
        return self.head.result()

    def _write(self, *data: bytes | memoryview) -> None:
        if self.transport is None:
            raise self.error or UpstreamError("the upstream closed the connection")
        self.transport.writelines(data)  # one write (uvloop: writev) for the head and a small body

    async def next_chunk(self) -> bytes:
        while not self.chunks:
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            self.waiter = self.loop.create_future()
            await self._within_read_timeout(self.waiter)
            self.waiter = None
        # Everything that arrived meanwhile goes out together: one write downstream, not one per upstream chunk.
        chunk = self.chunks.popleft() if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False
        return chunk

    def finish(self) -> None:
        if self.complete and not self.chunks and self.transport is not None and self.keep_alive:
            self._reset()
            self.used_at = time.monotonic()
            self.pool.put_back(self)
        else:
            self._close()


class _Handshake(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT, up to the blank line that ends it."""

    def __init__(self) -> None:
        self.buffer = b""
        self.head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and not self.head.done():
            self.head.set_result(self.buffer)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(OSError("the proxy closed the connection during CONNECT"))


class Pool:
    """Keep-alive connections per endpoint; ``request`` is the one call the proxy makes."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.idle: dict[Endpoint, deque[_Connection]] = {}
        self.tls = tls  # the system's trust store unless given (tests bring their own CA)

    def put_back(self, conn: _Connection) -> None:
        self.idle.setdefault(conn.key, deque()).append(conn)

    def _take(self, key: Endpoint) -> _Connection | None:
        idle = self.idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing() and now - conn.used_at < IDLE_SECONDS:
                conn.reused = True
                return conn
            conn._close()
        return None

    async def _connect(self, key: Endpoint, connect_timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(self, key)
        tls = (self.tls or _tls()) if key.scheme == "https" else None
        try:
            async with asyncio.timeout(connect_timeout):
                if key.proxy is None:
                    await loop.create_connection(lambda: conn, key.host, key.port, ssl=tls)
                elif tls is None:
                    await loop.create_connection(lambda: conn, key.proxy[0], key.proxy[1])
                else:
                    await self._tunnel(loop, conn, key, tls)
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to {key.host_header} took over {connect_timeout:g} s") from None
        except OSError as error:
            raise UpstreamError(f"cannot connect to {key.host_header}: {error.strerror or error}") from None
        return conn

    async def _tunnel(self, loop: asyncio.AbstractEventLoop, conn: _Connection, key: Endpoint,
                      tls: ssl.SSLContext) -> None:  # fmt: skip
        """HTTPS through an HTTP proxy: CONNECT, then TLS over the tunnel."""
        assert key.proxy is not None
        transport, handshake = await loop.create_connection(_Handshake, key.proxy[0], key.proxy[1])
        auth = f"Proxy-Authorization: {key.proxy[2]}\r\n" if key.proxy[2] else ""
        transport.write(f"CONNECT {key.host}:{key.port} HTTP/1.1\r\nHost: {key.host}:{key.port}\r\n{auth}\r\n".encode())
        status_line = (await handshake.head).split(b"\r\n", 1)[0]
        if status_line.split()[1:2] != [b"200"]:
            transport.close()
            raise OSError(f"the proxy refused CONNECT: {status_line.decode(errors='replace')}")
        tls_transport = await loop.start_tls(transport, conn, tls, server_hostname=key.host)
        assert tls_transport is not None
        conn.connection_made(tls_transport)

    async def request(self, key: Endpoint, head: bytes, body: bytes | bytearray, *, connect_timeout: float,
                      read_timeout: float | None) -> Response:  # fmt: skip
        """Send one request; a pooled connection that turns out dead before answering is replaced once."""
        conn = self._take(key)
        if conn is not None:
            try:
                return await conn.send(head, body, read_timeout)
            except UpstreamError:
                if conn.received or isinstance(conn.error, UpstreamTimeout):
                    raise
                conn._close()  # closed by the server while idle: the request never reached it
        conn = await self._connect(key, connect_timeout)
        return await conn.send(head, body, read_timeout)

    def close(self) -> None:
        for idle in self.idle.values():
            for conn in idle:
                conn._close()
        self.idle.clear()
