"""Redis clients for the ``redis`` block: one server, a Sentinel-watched master, or a Cluster.

redis-py's ``from_url`` knows neither Sentinel nor Cluster URLs, so the Sentinel form is parsed here:
``redis+sentinel://[[user]:password@]host:26379[,host:26379...]/master[/db]`` (``rediss+sentinel`` for TLS to the
master). The password is the master's; the sentinels are asked without one. A Cluster is reached through
``redis.asyncio.cluster.RedisCluster`` from any one node's URL; every key of a client or a credential carries
one hash tag, so each script's keys sit on one shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis as RedisClient
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from .config import Redis

SENTINEL_PORT = 26379

Client = RedisClient | RedisCluster
#: What a Redis that is down or failing raises: redis-py's errors, a Cluster's that are none of them (no reachable
#: node, a slot not covered), and the socket's (TimeoutError among them).
UNAVAILABLE = (RedisError, RedisClusterException, OSError)


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    username: str | None
    password: str | None
    tls: bool


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The sentinels, master name, db and master credentials of a ``redis+sentinel://`` URL."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = []
    for host in hosts.split(","):
        name, colon, port = host.rpartition(":")
        if not colon or name.endswith(":"):  # no port, or a bare IPv6 address
            name, port = host, str(SENTINEL_PORT)
        if not name.strip("[]") or not port.isdigit():
            raise ValueError("redis+sentinel:// names each sentinel as host:port")
        sentinels.append((name.strip("[]"), int(port)))
    master, _, db = parts.path.strip("/").partition("/")
    if not master or (db and not db.isdigit()):
        raise ValueError("redis+sentinel:// ends in /master or /master/db")
    return SentinelTarget(
        tuple(sentinels), unquote(master), int(db or 0), unquote(username) or None, unquote(password) or None,
        parts.scheme.startswith("rediss"),
    )  # fmt: skip


def connect(settings: Redis, *, socket_timeout: float | None) -> Client:
    """A client for the block; ``socket_timeout=None`` for a subscriber, which waits on its socket for messages.

    redis-py's own retries are off: a check waits ``timeout`` at most, then the caller's on-error policy decides.
    """
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout, "socket_connect_timeout": settings.timeout,
        "retry": Retry(NoBackoff(), 0), "health_check_interval": 0,
    }  # fmt: skip
    if settings.cluster:
        options.pop("health_check_interval")
        return RedisCluster.from_url(settings.url, **options)
    if "+sentinel://" not in settings.url:
        return RedisClient.from_url(settings.url, **options)
    target = parse_sentinel_url(settings.url)
    timeouts = {"socket_timeout": settings.timeout, "socket_connect_timeout": settings.timeout}
    sentinel = Sentinel(target.sentinels, sentinel_kwargs=timeouts)  # type: ignore[no-untyped-call]
    master: RedisClient = sentinel.master_for(
        target.master, db=target.db, username=target.username, password=target.password, ssl=target.tls, **options
    )
    return master
