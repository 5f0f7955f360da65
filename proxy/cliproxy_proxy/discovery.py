"""Model discovery for credentials configured without a ``models`` list: ask the upstream's ``/models``."""

from __future__ import annotations

import asyncio
import logging

import orjson

from .runtime import Credential
from .upstream import Pool

log = logging.getLogger("cliproxy.discovery")


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


async def discover(
    pool: Pool,
    credentials: list[Credential],
    known: dict[str, tuple[str, ...]],
    *,
    refresh: bool = False,
    seconds: float = 5.0,
) -> dict[str, tuple[str, ...]]:
    """Model ids per credential id. A failed fetch keeps what was known before and is logged, not raised."""
    wanted = [c for c in credentials if c.discovers_models and (refresh or c.id not in known)]
    results = await asyncio.gather(*(_fetch(pool, c, seconds) for c in wanted), return_exceptions=True)
    found = {c.id: known[c.id] for c in credentials if c.id in known}
    for credential, result in zip(wanted, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("model discovery failed for %s: %s", credential.label, result or type(result).__name__)
        else:
            found[credential.id] = result
    return found
