"""The ``redis`` block's topologies: one server, a Sentinel URL, a Cluster (a real Sentinel and a real one-node
Cluster); what a bad block is told; and the operator's usage reads, which reach each topology the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis as RedisClient
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from cliproxy_operator import usage
from cliproxy_proxy.clients import client_of
from cliproxy_proxy.config import ClientKey, ConfigError, parse_config
from cliproxy_proxy.config import Redis as RedisSettings
from cliproxy_proxy.counters import budget_key, spend_key
from cliproxy_proxy.health import Health
from cliproxy_proxy.limits import Limits
from cliproxy_proxy.runtime import build_runtime
from cliproxy_proxy.store import SentinelTarget, connect, parse_sentinel_url

from ..support.redis_server import RedisSentinel, RedisServer, free_port


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("redis+sentinel://s1:26379,s2:26380/mymaster",
         SentinelTarget((("s1", 26379), ("s2", 26380)), "mymaster", 0, None, None, False)),
        ("rediss+sentinel://:p%40ss@s1,[::1]:26381/cache/2",
         SentinelTarget((("s1", 26379), ("::1", 26381)), "cache", 2, None, "p@ss", True)),
        ("redis+sentinel://user:pw@10.0.0.1:5000/m/",
         SentinelTarget((("10.0.0.1", 5000),), "m", 0, "user", "pw", False)),
    ],
)  # fmt: skip
def test_a_sentinel_url_names_its_sentinels_master_db_and_credentials(url: str, parsed: SentinelTarget) -> None:
    assert parse_sentinel_url(url) == parsed


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"url": "http://redis:6379"}, "redis.url: String should match pattern"),
        ({"url": "redis+sentinel://s1:26379"}, "names its master"),
        ({"url": "redis+sentinel://s1:26379/m", "cluster": True}, "cluster: true takes a redis://"),
        ({"url": "unix:///run/redis.sock", "cluster": True}, "cluster: true takes a redis://"),
        ({"url": "redis://:hunter2@redis:6379", "timeout": 9}, "redis.timeout"),
    ],
)
def test_a_bad_redis_block_is_refused_by_path_without_echoing_it(block: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"api-keys": ["k"], "redis": block})
    assert message in str(refused.value) and "hunter2" not in str(refused.value)


def test_each_topology_gets_its_redis_py_client_with_the_check_timeout() -> None:
    single = connect(RedisSettings(url="redis://127.0.0.1:6379/3", timeout=0.2), socket_timeout=0.2)
    assert isinstance(single, RedisClient)
    assert single.connection_pool.connection_kwargs["socket_timeout"] == 0.2
    assert single.connection_pool.connection_kwargs["db"] == 3

    sentinel = connect(RedisSettings(url="redis+sentinel://:pw@s1:26379/mymaster/1"), socket_timeout=None)
    assert isinstance(sentinel.connection_pool, SentinelConnectionPool)
    assert sentinel.connection_pool.service_name == "mymaster"
    assert sentinel.connection_pool.connection_kwargs["password"] == "pw"
    assert sentinel.connection_pool.connection_kwargs["db"] == 1

    cluster = connect(RedisSettings(url="redis://node-1:7000", cluster=True), socket_timeout=0.05)
    assert isinstance(cluster, RedisCluster)
    assert [(node.host, node.port) for node in cluster.nodes_manager.startup_nodes.values()] == [("node-1", 7000)]


async def test_limits_hold_through_a_real_sentinel_watched_master(redis_server: RedisServer, tmp_path: Path) -> None:
    sentinel = RedisSentinel(tmp_path, redis_server)
    sentinel.start()
    limits = Limits(CollectorRegistry())
    try:
        limits.configure(RedisSettings(url=sentinel.url, timeout=5.0))  # a loaded box: the bound, not a speed
        client = client_of(ClientKey.model_validate({"name": "team", "api-key": "k", "rate-limit": {"rpm": 2}}))
        verdicts = [await limits.admit(client) for _ in range(3)]
        assert [v.allowed for v in verdicts] == [True, True, False] and verdicts[2].limit == "rpm"
        async with RedisClient.from_url(redis_server.url) as master:  # counted on the master Sentinel named
            assert await master.exists("cliproxy:{team}:rpm")
    finally:
        await limits.close()
        sentinel.kill()


NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)
#: Two ClientKeys whose counters hash to different Cluster slots (the operator reads them in one pipeline).
BUDGETED = [{"metadata": {"name": name}, "spec": {"budget": {"tokens": 10, "per": "day"}}} for name in ("ann", "bob")]


async def operator_reads(counted_on: str, monkeypatch: pytest.MonkeyPatch, *, url: str, cluster: bool) -> None:
    """Counters written on the server ``counted_on`` are what the operator reads through the deployment's URL."""
    async with RedisClient.from_url(counted_on) as redis:
        for tokens, name in enumerate(("team.ann", "team.bob"), start=5):
            await redis.set(budget_key(name, "2026-12-03"), tokens)
            await redis.set(spend_key(name, "2026-12-03"), tokens * 1000)
    monkeypatch.setenv("CLIPROXY_REDIS_URL", url)
    monkeypatch.setenv("CLIPROXY_REDIS_CLUSTER", "true" if cluster else "")
    client = usage.connect()
    assert client is not None and isinstance(client, RedisCluster) is cluster
    try:
        read = await usage.observe(client, "team", BUDGETED, NOW)
    finally:
        await client.aclose()
    assert read == {"ann": usage.Usage("2026-12-03", 5, 5000), "bob": usage.Usage("2026-12-03", 6, 6000)}


async def test_the_operator_reads_usage_through_a_real_sentinel(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentinel = RedisSentinel(tmp_path, redis_server)
    sentinel.start()
    try:
        await operator_reads(redis_server.url, monkeypatch, url=sentinel.url, cluster=False)
    finally:
        sentinel.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis Cluster of one node holding every slot; once for the module (a node waits 2 s to call itself ok)."""
    node = RedisServer(tmp_path_factory.mktemp("cluster"), cluster=True)
    node.start()
    yield node
    node.kill()


async def test_limits_and_cooldowns_through_a_real_redis_cluster(cluster: RedisServer) -> None:
    async with RedisClient.from_url(cluster.url) as redis:
        await redis.flushall()
    runtime = build_runtime(parse_config({"groq": [{"api-key": "k", "models": [{"name": "llama"}]}]}), None)
    health = Health()
    health.sync(runtime.credentials)
    credential = runtime.credentials[0].id
    limits = Limits(CollectorRegistry(), health)
    try:
        limits.configure(RedisSettings(url=cluster.url, cluster=True, timeout=5.0))  # a loaded box: a bound
        client = client_of(ClientKey.model_validate({"name": "team", "api-key": "k", "rate-limit": {"rpm": 2}}))
        verdicts = [await limits.admit(client) for _ in range(3)]
        assert [v.allowed for v in verdicts] == [True, True, False] and verdicts[2].limit == "rpm"
        feed = limits.feed
        assert feed is not None
        for _ in range(200):  # the feed subscribes in the background
            if feed.client is not None:
                break
            await asyncio.sleep(0.05)
        limits.share(credential, "llama", 30, "quota")  # published, and heard back through the cluster
        for _ in range(200):
            if health.cooldowns:
                break
            await asyncio.sleep(0.05)
        assert 29 < health.cooldowns[(credential, "llama")].until - health.clock() <= 30
        health.cooldowns.clear()
        await feed.resync()  # and read back from the hash
        assert 0 < health.cooldowns[(credential, "llama")].until - health.clock() <= 30
    finally:
        await limits.close()


async def test_the_operator_reads_usage_through_a_real_redis_cluster(
    cluster: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.cluster import key_slot

    slots = {key_slot(budget_key(name, "2026-12-03").encode()) for name in ("team.ann", "team.bob")}
    assert len(slots) == 2  # one pipeline across two slots, as on a cluster of many shards
    await operator_reads(cluster.url, monkeypatch, url=cluster.url, cluster=True)


async def test_a_cluster_without_a_reachable_node_is_redis_down_not_a_500() -> None:
    """redis-py's RedisClusterException is no RedisError: it used to escape the check (a 500) and the operator's
    usage loop (which then died)."""
    down = f"redis://127.0.0.1:{free_port()}"
    client = client_of(ClientKey.model_validate({"name": "team", "api-key": "k", "rate-limit": {"rpm": 2},
                                                 "budget": {"tokens": 10}}))  # fmt: skip
    for on_error, allowed in (("allow", True), ("deny", False)):
        limits = Limits(CollectorRegistry())
        try:
            limits.configure(RedisSettings(url=down, cluster=True, timeout=1.0, on_error=on_error))
            verdict = await limits.admit(client)
            assert (verdict.allowed, verdict.counted) == (allowed, False)
            assert await limits.spent(client) is None
        finally:
            await limits.close()
    redis = connect(RedisSettings(url=down, cluster=True, timeout=1.0), socket_timeout=1.0)
    try:
        assert await usage.observe(redis, "team", BUDGETED, NOW) is None  # unknown, and the loop goes on
    finally:
        await redis.aclose()
