"""Where client counters live in Redis and for which period: the layout the proxies write and the operator reads.

Every key of a client carries its name as one hash tag, so a Redis Cluster keeps a client's counters on one shard.
A deployment names its Redis in the environment (the Helm chart), the password apart from the URL.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from urllib.parse import quote

from .config import Budget, Redis

REDIS_URL_ENV = "CLIPROXY_REDIS_URL"  # the Redis a deployment names for every config without its own (Helm)
REDIS_PASSWORD_ENV = "CLIPROXY_REDIS_PASSWORD"  # its password, kept out of the URL in the pod spec
REDIS_CLUSTER_ENV = "CLIPROXY_REDIS_CLUSTER"  # "true": the URL names one node of a Redis Cluster


_periods: dict[str, tuple[float, float, str]] = {}  # "day"/"month": the current one's start, end and name


def period(budget: Budget | None, now: float) -> tuple[str, int]:
    """The budget's current period (``2026-12`` or ``2026-12-02``) and the seconds left in it. A key without a
    budget counts its usage by the month, so a ClientKey's status shows what it used all the same. Asked on
    every admission: the current period is kept until it ends."""
    per = "day" if budget is not None and budget.per == "day" else "month"
    start, end, name = _periods.get(per, (0.0, 0.0, ""))
    if not start <= now < end:
        moment = datetime.fromtimestamp(now, UTC)
        if per == "day":
            first = moment.replace(hour=0, minute=0, second=0, microsecond=0)
            start, end, name = first.timestamp(), first.timestamp() + 86400, first.strftime("%Y-%m-%d")
        else:
            first = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            after = first.replace(year=first.year + 1, month=1) if first.month == 12 else \
                first.replace(month=first.month + 1)  # fmt: skip
            start, end, name = first.timestamp(), after.timestamp(), first.strftime("%Y-%m")
        _periods[per] = (start, end, name)
    return name, max(1, int(end - now))


def budget_key(client_name: str, budget_period: str) -> str:
    """The tokens a client used in a period (the operator reads it for a ClientKey's status)."""
    return f"cliproxy:{{{client_name}}}:budget:{budget_period}"


def spend_key(client_name: str, budget_period: str) -> str:
    """The micro-dollars a client spent in a period (every answer of a ``client-keys`` key adds its cost)."""
    return f"cliproxy:{{{client_name}}}:spend:{budget_period}"


def redis_from_env() -> Redis | None:
    """The deployment's Redis (``CLIPROXY_REDIS_URL``, password in ``CLIPROXY_REDIS_PASSWORD``, a Cluster with
    ``CLIPROXY_REDIS_CLUSTER=true``), or None."""
    url = os.environ.get(REDIS_URL_ENV)
    if not url:
        return None
    password = os.environ.get(REDIS_PASSWORD_ENV)
    if password:
        scheme, _, rest = url.partition("://")
        url = f"{scheme}://:{quote(password, safe='')}@{rest.rpartition('@')[2]}"
    return Redis(url=url, cluster=os.environ.get(REDIS_CLUSTER_ENV, "").strip().lower() == "true")
