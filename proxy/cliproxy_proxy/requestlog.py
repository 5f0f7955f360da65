"""The opt-in request log (``request-log``): one JSON line per request, never a key or a body.

A request only puts its line on a bounded queue; a thread writes the lines, so the event loop never waits on a
disk or a pipe. When the writer falls behind, lines are dropped and counted rather than held without bound.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import re
import sys
import threading
from typing import IO, Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from .config import RequestLog as Settings

log = logging.getLogger("cliproxy.requestlog")

QUEUE_LINES = 10_000
#: A caller's own ``X-Request-Id`` is kept when it is this plain; anything else gets an id of the proxy's.
_CALLER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id(given: str | None) -> str:
    return given if given is not None and _CALLER_ID.fullmatch(given) else os.urandom(8).hex()


class _Writer(threading.Thread):
    """Writes queued lines to the log's file (opened here, off the loop) or to standard output."""

    def __init__(self, path: str) -> None:
        super().__init__(name="cliproxy-request-log", daemon=True)
        self.path = path
        self.lines: queue.Queue[bytes | None] = queue.Queue(QUEUE_LINES)

    def run(self) -> None:
        own = self.path != "stdout"
        try:
            stream: IO[bytes] = open(self.path, "ab") if own else sys.stdout.buffer  # noqa: SIM115
        except (OSError, AttributeError) as error:  # AttributeError: a stdout without bytes (replaced)
            log.warning("request-log: cannot write to %s (%s); no request is logged", self.path, error)
            while self.lines.get() is not None:  # keep draining, so requests never see a full queue
                pass
            return
        try:
            while (line := self.lines.get()) is not None:
                batch = [line]
                while len(batch) < 256:  # what else is waiting goes out in the same write
                    try:
                        more = self.lines.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        self.lines.put(None)
                        break
                    batch.append(more)
                stream.write(b"".join(batch))
                stream.flush()
        except OSError as error:
            log.warning("request-log: writing %s failed (%s); no request is logged", self.path, error.strerror)
        finally:
            if own:
                stream.close()


class RequestLog:
    """The live request log of the config in force (a reload may switch it on, off or elsewhere)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.dropped = Counter("cliproxy_request_log_dropped", "Request log lines dropped: the writer fell behind",
                               registry=registry)  # fmt: skip
        self.settings = Settings()
        self.writer: _Writer | None = None

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def configure(self, settings: Settings) -> None:
        if settings == self.settings:
            return
        self.close()
        self.settings = settings
        if settings.enabled:
            self.writer = _Writer(settings.path)
            self.writer.start()

    def write(self, entry: dict[str, Any]) -> None:
        if self.writer is None:
            return
        try:
            self.writer.lines.put_nowait(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))
        except queue.Full:
            self.dropped.inc()

    def close(self) -> None:
        """Stop writing; the lines already queued are still written (by the thread, not waited for here)."""
        if self.writer is not None:
            try:
                self.writer.lines.put_nowait(None)
            except queue.Full:
                threading.Thread(target=self.writer.lines.put, args=(None,), daemon=True).start()
            self.writer = None

    async def drain(self) -> None:
        """Stop writing and wait (a bounded while, in a thread) until the lines already queued are written."""
        writer = self.writer
        self.close()
        if writer is not None:
            await asyncio.to_thread(writer.join, 5.0)
