"""Model discovery for credentials configured without a ``models`` list: ask the upstream's ``/models``.

A credential whose list is unknown serves no model, so a failed fetch (the upstream down at start, a 401 until a
key is rotated) is tried again soon, backing off from seconds to minutes, not at the next 10-minute refresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from .runtime import Credential
from .upstream import Pool

log = logging.getLogger("cliproxy.discovery")

RETRY_BASE = 2.0  # seconds before the first retry of a failed discovery; doubled per failure
RETRY_MAX = 300.0


async def _fetch(pool: Pool, credential: Credential, seconds: float) -> tuple[str, ...]:
    head = credential.endpoint.head("GET", credential.models_endpoint, credential.headers)
    response = await pool.request(credential.endpoint, head, b"", connect_timeout=seconds, read_timeout=seconds)
    try:
        body = await response.read()
    finally:
        response.release()
    if response.status != 200:
        raise ValueError(f"HTTP {response.status}")
    document = orjson.loads(body)
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        raise ValueError("no 'data' list in the answer")
    ids = {item["id"] for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)}
    return tuple(sorted(ids))


@dataclass(slots=True)
class _Retry:
    failures: int
    due: float  # monotonic time of the next attempt


class Discovery:
    """Model ids per credential id, and when to ask again for the credentials whose fetch failed.

    ``report(provider, ok)`` is told of every attempt (the metrics).
    """

    def __init__(self, report: Callable[[str, bool], None] = lambda provider, ok: None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.known: dict[str, tuple[str, ...]] = {}
        self.retries: dict[str, _Retry] = {}
        self.report = report
        self.clock = clock

    async def run(self, pool: Pool, credentials: list[Credential], *, refresh: bool = False,
                  seconds: float = 5.0) -> dict[str, tuple[str, ...]]:  # fmt: skip
        """Fetch what is unknown (everything with ``refresh``); a failure keeps what was known before."""
        wanted = [c for c in credentials if c.discovers_models and (refresh or c.id not in self.known)]
        results = await asyncio.gather(*(_fetch(pool, c, seconds) for c in wanted), return_exceptions=True)
        live = {c.id for c in credentials}
        self.known = {cid: ids for cid, ids in self.known.items() if cid in live}
        self.retries = {cid: retry for cid, retry in self.retries.items() if cid in live}
        for credential, result in zip(wanted, results, strict=True):
            self.report(credential.provider, not isinstance(result, BaseException))
            if isinstance(result, BaseException):
                self._failed(credential, result)
            else:
                self.known[credential.id] = result
                self.retries.pop(credential.id, None)
        return dict(self.known)

    def _failed(self, credential: Credential, error: BaseException) -> None:
        failures = self.retries[credential.id].failures + 1 if credential.id in self.retries else 1
        wait = min(RETRY_BASE * 2 ** (failures - 1), RETRY_MAX)
        self.retries[credential.id] = _Retry(failures, self.clock() + wait)
        known = " (its last list keeps serving)" if credential.id in self.known else ""
        log.warning("model discovery failed for %s: %s; retry in %g s%s", credential.label,
                    error or type(error).__name__, wait, known)  # fmt: skip

    def retry_due(self, credentials: tuple[Credential, ...]) -> bool:
        """Whether a credential whose list is unknown is due another attempt."""
        now = self.clock()
        pending = (c.id for c in credentials if c.discovers_models and c.id not in self.known)
        return any(cid not in self.retries or self.retries[cid].due <= now for cid in pending)

    def failing(self, credentials: tuple[Credential, ...]) -> dict[str, int]:
        """Credentials per provider whose model list is unknown (they serve nothing until it is fetched)."""
        counts: dict[str, int] = {}
        for c in credentials:
            if c.discovers_models:
                counts[c.provider] = counts.get(c.provider, 0) + (c.id not in self.known)
        return counts
