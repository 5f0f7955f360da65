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


def period(budget: Budget, now: float) -> tuple[str, int]:
    """The budget's current period (``2026-12`` or ``2026-12-02``) and the seconds left in it."""
    moment = datetime.fromtimestamp(now, UTC)
    if budget.per == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start.timestamp() + 86400
        return start.strftime("%Y-%m-%d"), max(1, int(end - now))
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    after = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start.strftime("%Y-%m"), max(1, int(after.timestamp() - now))


def budget_key(client_name: str, budget_period: str) -> str:
    """The tokens a client used in a budget period (the operator reads it for a ClientKey's status)."""
    return f"cliproxy:{{{client_name}}}:budget:{budget_period}"


def spend_key(client_name: str, budget_period: str) -> str:
    """The micro-dollars a client spent in a budget period (a budgeted client's answers add their cost)."""
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
