"""Model discovery for credentials configured without a ``models`` list: ask the upstream's ``/models``."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import orjson

from .runtime import Credential

log = logging.getLogger("cliproxy.discovery")


async def _fetch(session: aiohttp.ClientSession, credential: Credential, seconds: float) -> tuple[str, ...]:
    async with session.get(
        credential.base_url + credential.models_endpoint,
        headers=credential.headers,
        proxy=credential.proxy,
        timeout=aiohttp.ClientTimeout(total=seconds),
    ) as response:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        document = orjson.loads(await response.read())
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        raise ValueError("no 'data' list in the answer")
    return tuple(sorted({item["id"] for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)}))


async def discover(
    session: aiohttp.ClientSession,
    credentials: list[Credential],
    known: dict[str, tuple[str, ...]],
    *,
    refresh: bool = False,
    seconds: float = 5.0,
) -> dict[str, tuple[str, ...]]:
    """Model ids per credential id. A failed fetch keeps what was known before and is logged, not raised."""
    wanted = [c for c in credentials if c.discovers_models and (refresh or c.id not in known)]
    results = await asyncio.gather(*(_fetch(session, c, seconds) for c in wanted), return_exceptions=True)
    found = {c.id: known[c.id] for c in credentials if c.id in known}
    for credential, result in zip(wanted, results, strict=True):
        if isinstance(result, BaseException):
            reason = type(result).__name__ if isinstance(result, aiohttp.ClientError) else str(result)
            log.warning("model discovery failed for %s: %s", credential.label, reason or "timeout")
        else:
            found[credential.id] = result
    return found
