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
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError


class AutoPipeline:
    """One connection of ``redis``'s pool kind, kept apart from the pool; replies come back in command order."""

    def __init__(self, redis: Redis, timeout: float) -> None:
        pool = redis.connection_pool
        # No socket timeout on this connection: redis-py would run each write in a task of its own to bound it.
        # A read waits ``timeout`` at most (below), and every caller bounds its own wait.
        self.make: Callable[[], AbstractConnection] = lambda: pool.connection_class(
            **{**pool.connection_kwargs, "socket_timeout": None}
        )
        self.timeout = timeout
        self.connection: AbstractConnection | None = None
        self.queued: list[tuple[Any, ...]] = []
        self.waiters: list[asyncio.Future[Any]] = []
        self.inflight: deque[asyncio.Future[Any]] = deque()
        self.wake = asyncio.Event()
        self.writer: asyncio.Task[None] | None = None
        self.reader: asyncio.Task[None] | None = None

    async def execute(self, *args: Any) -> Any:
        """The command's reply; a Redis error reply is raised as redis-py raises it."""
        future = asyncio.get_running_loop().create_future()
        self.queued.append(args)
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
                    connection = self.connection = self.make()
                    await connection.connect()  # type: ignore[no-untyped-call]
                self.inflight.extend(futures)
                await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
            except (RedisError, OSError) as error:
                await self._reset(connection, error, futures)
                continue
            if self.reader is None or self.reader.done():
                self.reader = asyncio.get_running_loop().create_task(self._read(connection))

    async def _read(self, connection: AbstractConnection) -> None:
        inflight = self.inflight
        try:
            while inflight:
                try:
                    async with asyncio.timeout(self.timeout):
                        reply = await connection.read_response(timeout=math.inf)
                except ResponseError as error:
                    reply = error
                future = inflight.popleft()
                if future.done():  # its caller stopped waiting
                    continue
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (RedisError, OSError, TimeoutError) as error:
            await self._reset(connection, error, [])

    async def _reset(
        self, connection: AbstractConnection | None, error: BaseException, futures: list[asyncio.Future[Any]]
    ) -> None:
        """Fail everything sent on a connection that broke; the next command connects anew."""
        failure = error if isinstance(error, RedisError) else RedisConnectionError(type(error).__name__)
        waiting = [*futures, *self.inflight] if connection is self.connection else futures
        if connection is self.connection:
            self.inflight.clear()
            self.connection = None
        for future in waiting:
            if not future.done():
                future.set_exception(failure)
        if connection is not None:
            await connection.disconnect(nowait=True)

    async def close(self) -> None:
        for task in (self.writer, self.reader):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self.writer, self.reader) if t is not None), return_exceptions=True)
        await self._reset(self.connection, RedisConnectionError("closed"), self.waiters)


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
