"""Commands to one Redis server on one connection, written as they come and answered in order.

redis-py's client takes a pooled connection, sends, reads and releases it for every command, which costs more
CPU than the proxy spends on the rest of a request. Limits ask Redis on every request, so they share one
dedicated connection instead. redis-py still connects it (AUTH, SELECT, TLS, a Sentinel's current master); then
its transport is taken over: a command is written at once when the connection is idle (else with the others of
its loop turn, in one write), and hiredis parses the replies as they arrive, handing each to the oldest caller
waiting. No task stands between a caller and the socket, which at one request at a time is most of the cost.

A caller's wait is bounded by a watchdog over the oldest command unanswered, not by a timer per command: past its
deadline the connection is dropped and everything on it fails, as its replies may never come. A Redis Cluster
spreads keys over shards and keeps redis-py's own path.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

_INCOMPLETE = object()  # hiredis' answer while a reply has not fully arrived (False is a RESP3 reply)


class AutoPipeline:
    """One connection of ``redis``'s pool kind, kept apart from the pool; every wait bounded by ``timeout``."""

    def __init__(self, redis: Redis, timeout: float) -> None:
        pool = redis.connection_pool
        # Its handshake is bounded by the pool's own timeouts; once taken over, by the watchdog.
        self.make: Callable[[], AbstractConnection] = lambda: pool.connection_class(**pool.connection_kwargs)
        self.timeout = timeout
        self.link: _Link | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()  # (caller, deadline), in command order
        self.unsent: list[bytes] = []  # commands of this loop turn, or asked while connecting
        self.flush_soon: asyncio.Handle | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the one its connection lives on

    def execute(self, *args: str | int | bytes) -> asyncio.Future[Any]:
        """The command's reply, to await; a Redis error reply is raised as a ``ResponseError``."""
        loop = self.loop = self.loop or asyncio.get_running_loop()  # asked once: on 3.11 each costs a getpid()
        future = loop.create_future()
        self.waiting.append((future, loop.time() + self.timeout))
        command = hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub types a tuple of one
        link = self.link
        if link is not None and len(self.waiting) == 1:  # idle: no reason to wait for the loop turn's others
            link.transport.write(command)
        else:
            self.unsent.append(command)
            if link is None:
                if self.connecting is None:
                    self.connecting = loop.create_task(self._connect())
            elif self.flush_soon is None:
                self.flush_soon = loop.call_soon(self._flush)
        if self.watchdog is None:
            self.watchdog = loop.call_at(self.waiting[0][1], self._watch)
        return future

    def _flush(self) -> None:
        self.flush_soon = None
        if self.link is not None and self.unsent:
            self.link.transport.write(b"".join(self.unsent))
            self.unsent.clear()

    async def _connect(self) -> None:
        """Connect and write what was asked meanwhile; a failure fails what waits (not cut short by ``_fail``: a
        handshake is bounded by the pool's timeouts, and one that succeeds late serves the next commands)."""
        connection = self.make()
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
        except (RedisError, OSError) as error:
            self.connecting = None
            self._fail(error)
            return
        self.connecting = None
        # redis-py's stream, taken over once the handshake is done (nothing of it is left unread)
        transport = cast(asyncio.Transport, connection._writer.transport)  # type: ignore[union-attr]
        self.link = _Link(self, connection, transport)
        transport.set_protocol(self.link)
        self._flush()

    def _watch(self) -> None:
        """The oldest command's deadline came: drop a connection that did not answer it in time."""
        self.watchdog = None
        loop = asyncio.get_running_loop()
        if not self.waiting:
            return
        deadline = self.waiting[0][1]
        if deadline <= loop.time() + 0.001:  # timers may fire a millisecond early (uvloop rounds to ms)
            self._fail(TimeoutError(f"no reply from redis within {self.timeout:g} s"))
        else:
            self.watchdog = loop.call_at(deadline, self._watch)

    def _answer(self, reply: Any) -> None:
        future, _ = self.waiting.popleft()
        if future.done():  # its caller stopped waiting
            return
        if isinstance(reply, ResponseError):
            future.set_exception(reply)
        else:
            future.set_result(reply)

    def _fail(self, error: BaseException) -> None:
        """Fail every command waiting and drop the connection; the next command connects anew."""
        link, self.link = self.link, None
        waiting, self.waiting = self.waiting, deque()
        self.unsent.clear()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(error)
        if link is not None:
            link.transport.abort()

    async def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.flush_soon is not None:
            self.flush_soon.cancel()
        if self.connecting is not None:
            self.connecting.cancel()
            await asyncio.gather(self.connecting, return_exceptions=True)
        self._fail(RedisConnectionError("closed"))


class _Link(asyncio.Protocol):
    """The reading side of one taken-over connection: replies parsed as they arrive, each to its caller."""

    def __init__(self, pipe: AutoPipeline, connection: AbstractConnection, transport: asyncio.Transport) -> None:
        self.pipe = pipe
        self.connection = connection  # held: redis-py closes its transport when the connection is collected
        self.transport = transport
        self.replies = hiredis.Reader(replyError=ResponseError, notEnoughData=_INCOMPLETE)

    def data_received(self, data: bytes) -> None:
        if self.pipe.link is not self:
            return
        try:
            self.replies.feed(data)
            while (reply := self.replies.gets()) is not _INCOMPLETE:
                self.pipe._answer(reply)  # a reply nobody asked for: IndexError, a broken stream
        except (hiredis.ProtocolError, IndexError) as error:
            self.pipe._fail(RedisConnectionError(f"unreadable reply stream ({type(error).__name__})"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pipe.link is self:
            self.pipe._fail(RedisConnectionError("connection closed by the server"))


class Script:
    """A Lua script run by its SHA, loaded by a plain EVAL the first time a server does not know it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, pipe: AutoPipeline, keys: tuple[str, ...], args: tuple[Any, ...]) -> Coroutine[Any, Any, Any]:
        """The script's reply, to await: its EVALSHA is written now, its EVAL only if the server did not know it."""
        return self._reply(pipe.execute("EVALSHA", self.sha, len(keys), *keys, *args), pipe, keys, args)

    async def _reply(
        self, sent: asyncio.Future[Any], pipe: AutoPipeline, keys: tuple[str, ...], args: tuple[Any, ...]
    ) -> Any:
        try:
            return await sent
        except ResponseError as error:
            if not str(error).startswith("NOSCRIPT"):  # not a restarted or flushed server
                raise
            return await pipe.execute("EVAL", self.source, len(keys), *keys, *args)
