"""The deployment's Redis (CLIPROXY_REDIS_URL, as the Helm chart sets it): limits shared without a ``redis`` block.

The operator renders no Redis into a gateway's config (its URL and password belong to the deployment, not to a
ConfigMap every namespace reads); each replica names it in its environment instead, the password apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from redis import Redis

from cliproxy_proxy.clients import client_of
from cliproxy_proxy.config import ClientKey
from cliproxy_proxy.limits import Limits

from ..support.redis_server import RedisServer

PASSWORD = "p@ss:/w rd#1"  # characters a URL would otherwise misread
CLIENT = client_of(ClientKey.model_validate({"name": "team-a.app", "api-key": "k", "rate-limit": {"rpm": 1}}))


@pytest.fixture
def protected_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    Redis.from_url(server.url).config_set("requirepass", PASSWORD)
    yield server
    server.kill()


def replica() -> Limits:
    limits = Limits(CollectorRegistry())
    if limits.default is not None:  # a check is bounded by 5 s, not 50 ms: a loaded box must not decide on-error
        limits.default = limits.default.model_copy(update={"timeout": 5.0})
    limits.configure(None)  # the rendered config names no Redis
    return limits


async def test_replicas_share_the_deployments_redis_with_its_password_apart(
    protected_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIPROXY_REDIS_URL", protected_redis.url)
    monkeypatch.setenv("CLIPROXY_REDIS_PASSWORD", PASSWORD)
    first, second = replica(), replica()
    try:
        admitted = await first.admit(CLIENT)
        refused = await second.admit(CLIENT)  # the other replica sees the same minute
        assert admitted.allowed and admitted.counted
        assert (refused.allowed, refused.limit, refused.counted) == (False, "rpm", True)
    finally:
        await first.close()
        await second.close()


async def test_without_it_each_replica_counts_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPROXY_REDIS_URL", raising=False)
    first, second = replica(), replica()
    assert (await first.admit(CLIENT)).allowed and (await second.admit(CLIENT)).allowed
    assert not (await first.admit(CLIENT)).allowed
