"""Commands to one Redis server written together: everything asked in one loop turn goes out in one write.

redis-py's client takes a pooled connection, sends, reads and releases it for every command, which costs more
CPU than the proxy spends on the rest of a request. Limits ask Redis on every request, so they share one
dedicated connection instead: callers queue a command and await its reply, a writer sends all queued commands
at once and a reader hands the replies back in order. redis-py still connects it (AUTH, SELECT, TLS, a Sentinel's
current master) and parses the replies. A Redis Cluster spreads keys over shards and keeps redis-py's own path.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError


class AutoPipeline:
    """One connection of ``redis``'s pool kind, kept apart from the pool; replies come back in command order."""

    def __init__(self, redis: Redis) -> None:
        pool = redis.connection_pool
        # No socket timeout on this connection: redis-py would run each write in a task of its own to bound it.
        # Every caller bounds its own wait, and one that waited in vain calls ``stalled``.
        self.make: Callable[[], AbstractConnection] = lambda: pool.connection_class(
            **{**pool.connection_kwargs, "socket_timeout": None}
        )
        self.connection: AbstractConnection | None = None
        self.inflight: deque[asyncio.Future[Any]] = deque()  # the connection's commands sent, not yet answered
        self.queued: list[bytes] = []
        self.waiters: list[asyncio.Future[Any]] = []
        self.wake = asyncio.Event()
        self.writer: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()  # each connection's reader, and resets

    async def execute(self, *args: str | int | bytes) -> Any:
        """The command's reply; a Redis error reply is raised as redis-py raises it."""
        future = asyncio.get_running_loop().create_future()
        self.queued.append(pack(args))
        self.waiters.append(future)
        self.wake.set()
        if self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._write())
        return await future

    async def _write(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            commands, futures = self.queued, self.waiters
            self.queued, self.waiters = [], []
            connection = self.connection
            try:
                if connection is None:
                    connection = await self._connect()
                self.inflight.extend(futures)
                await connection.send_packed_command(b"".join(commands), check_health=False)
            except (RedisError, OSError) as error:
                await self._reset(connection, error, futures)

    async def _connect(self) -> AbstractConnection:
        connection = self.make()
        await connection.connect()  # type: ignore[no-untyped-call]
        self.connection, self.inflight = connection, deque()
        self._spawn(self._read(connection, self.inflight))
        return connection

    async def _read(self, connection: AbstractConnection, inflight: deque[asyncio.Future[Any]]) -> None:
        """The connection's replies, for as long as it lives: reading while idle also sees Redis close it."""
        try:
            while True:
                try:
                    reply = await connection.read_response(timeout=math.inf)  # a stall is the callers' to see
                except ResponseError as error:
                    reply = error
                future = inflight.popleft()  # a reply nobody asked for: IndexError, a broken stream
                if future.done():  # its caller stopped waiting
                    continue
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (RedisError, OSError, IndexError) as error:
            await self._reset(connection, error, [])

    def stalled(self) -> None:
        """A caller waited its whole timeout: drop the connection (its replies may never come) for a new one."""
        if self.connection is not None and self.inflight:
            self._spawn(self._reset(self.connection, RedisConnectionError("no reply within the timeout"), []))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reset(
        self, connection: AbstractConnection | None, error: BaseException, futures: list[asyncio.Future[Any]]
    ) -> None:
        """Fail everything sent on a connection that broke; the next command connects anew."""
        failure = error if isinstance(error, RedisError) else RedisConnectionError(type(error).__name__)
        waiting = futures
        if connection is not None and connection is self.connection:
            waiting = [*futures, *self.inflight]
            self.connection, self.inflight = None, deque()
        for future in waiting:
            if not future.done():
                future.set_exception(failure)
        if connection is not None:
            await connection.disconnect(nowait=True)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.cancel()
        await self._reset(self.connection, RedisConnectionError("closed"), self.waiters)
        for task in (self.writer, *self.tasks):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self.writer, *self.tasks) if t is not None), return_exceptions=True)


def pack(args: tuple[str | int | bytes, ...]) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Script:
    """A Lua script run by its SHA, loaded by a plain EVAL the first time a server does not know it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, pipe: AutoPipeline, keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        try:
            return await pipe.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or flushed server
            return await pipe.execute("EVAL", self.source, len(keys), *keys, *args)
