"""What each ClientKey used in its current budget period, read from the Redis its gateway's proxies count in.

The proxies keep every key's period tokens and cost in Redis (cliproxy_proxy.counters); the operator reads
them for the status, one pipelined round trip per namespace on a timer, never one per key. Without Redis each
replica counts alone and there is nothing shared to read: the status says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cliproxy_proxy.contract import (
    REDIS_UNAVAILABLE,
    Budget,
    RedisClient,
    budget_key,
    connect_redis,
    period,
    redis_from_env,
    spend_key,
)

from .clientkeys import MICRO, client_name
from .render import Resource

INTERVAL_ENV = "CLIPROXY_USAGE_SECONDS"
INTERVAL = 30.0
TIMEOUT = 5.0  # a read that takes longer is given up; the statuses keep the last usage read


@dataclass(frozen=True)
class Usage:
    period: str
    tokens: int
    micro_usd: int = 0

    @property
    def usd(self) -> str:
        """Dollars as a decimal string, exact to the micro-dollar the proxies count in (``0.0123``)."""
        whole, micro = divmod(self.micro_usd, MICRO)
        return f"{whole}.{micro:06d}".rstrip("0").rstrip(".") if micro else str(whole)


def connect() -> RedisClient | None:
    """A client for the Redis the proxies of this deployment share, or None: the same environment and the same
    connector as theirs, so a Sentinel URL or a Cluster reads where the proxies count."""
    settings = redis_from_env()
    if settings is None:
        return None
    return connect_redis(settings.model_copy(update={"timeout": TIMEOUT}), socket_timeout=TIMEOUT)


def interval() -> float:
    return float(os.environ.get(INTERVAL_ENV) or INTERVAL)


def counters(namespace: str, clientkeys: list[Resource], now: datetime) -> dict[str, tuple[str, str, str]]:
    """Each ClientKey's period (its budget's, else the month) and the Redis keys its proxies count it in."""
    found = {}
    for resource in clientkeys:
        budget = resource.get("spec", {}).get("budget")
        per = Budget.model_construct(tokens=0, per=budget.get("per") or "month") if budget else None
        name = str(resource["metadata"]["name"])
        current, _ = period(per, now.timestamp())
        client = client_name(namespace, name)
        found[name] = (current, budget_key(client, current), spend_key(client, current))
    return found


async def read(redis: RedisClient, wanted: Mapping[str, tuple[str, str, str]]) -> dict[str, Usage]:
    """Every counter in one pipelined round trip (GETs, not MGET: a Redis Cluster spreads clients over shards)."""
    if not wanted:
        return {}
    names = sorted(wanted)
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.get(wanted[name][1])
            pipe.get(wanted[name][2])
        values: list[Any] = await pipe.execute()
    return {name: Usage(wanted[name][0], int(values[2 * i] or 0), int(values[2 * i + 1] or 0))
            for i, name in enumerate(names)}  # fmt: skip


async def observe(
    redis: RedisClient, namespace: str, clientkeys: list[Resource], now: datetime
) -> dict[str, Usage] | None:
    """The namespace's usage now, or None when Redis did not answer (the caller keeps what it read last)."""
    try:
        return await read(redis, counters(namespace, clientkeys, now))
    except REDIS_UNAVAILABLE:  # a Cluster without a reachable node too
        return None
