"""Coalescing: a burst of events about one key (a namespace) becomes one run of the work, a moment later.

kopf calls a handler per event; rendering per event is what made 2,000 routes cost 20,000 writes. Events only
mark their key dirty; one task per key waits ``delay``, runs the work once for everything seen so far, and
runs again only if more events arrived meanwhile. A failed run is retried after ``retry`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("cliproxy.operator")


class Coalescer:
    def __init__(self, work: Callable[[str], Awaitable[None]], delay: float = 0.3, retry: float = 5.0) -> None:
        self._work, self.delay, self.retry = work, delay, retry
        self._dirty: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def poke(self, key: str) -> None:
        """Ask for one run of the work for ``key`` soon; many pokes before it starts make one run."""
        self._dirty.add(key)
        if key not in self._tasks:
            self._tasks[key] = asyncio.get_running_loop().create_task(self._drain(key), name=f"reconcile {key}")

    async def _drain(self, key: str) -> None:
        try:
            while key in self._dirty:
                await asyncio.sleep(self.delay)
                self._dirty.discard(key)
                try:
                    await self._work(key)
                except Exception as error:  # the next poke or the retry renders again; nothing is lost
                    log.warning("reconcile of %s failed (%s); retrying in %g s", key, type(error).__name__, self.retry)
                    await asyncio.sleep(self.retry)
                    self._dirty.add(key)
        finally:
            self._tasks.pop(key, None)

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
