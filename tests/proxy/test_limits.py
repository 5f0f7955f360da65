"""Client limits (rpm, tpm, max-parallel, budgets) in process and on a REAL shared redis-server.

``shared`` runs two proxy apps that name one Redis, driven alternately; without it one app counts in process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from cliproxy_proxy.clients import Client, client_of
from cliproxy_proxy.config import ClientKey
from cliproxy_proxy.config import Redis as RedisSettings
from cliproxy_proxy.cooldowns import CHANNEL, KEY
from cliproxy_proxy.counters import budget_key, period
from cliproxy_proxy.demo_upstream import Fault
from cliproxy_proxy.limits import Limits

from ..support.proxy import FakeProvider, RunningProxy, base_config, compat_block, eventually
from ..support.redis_server import RedisServer

TEAM = "team-key-1"
GUARD = 10.0  # seconds: far above redis.timeout; a request slower than this hangs
HEALTHY = 5.0  # seconds: redis.timeout where Redis is up. The timeout is wall time on a loop shared with the
# clients, both replicas and the fake upstream; a loaded CI box can stall it past 1 s, and a check that times out
# is decided by on-error (allow), which would let a burst past the limit under test.


def limited_config(provider: FakeProvider, redis: dict[str, Any] | None, **limits: Any) -> dict[str, Any]:
    client = {"name": "team", "api-key": TEAM, **limits}
    config = base_config(**{"openai-compatibility": [compat_block(provider.url)], "client-keys": [client]})
    if redis is not None:
        config["redis"] = redis
    return config


async def replicas(
    start_proxy, config: dict[str, Any], shared: bool
) -> tuple[list[RunningProxy], list[openai.AsyncOpenAI]]:  # type: ignore[no-untyped-def]
    """Two apps on one Redis when ``shared``, else one app (in process) standing for both; and the team's clients."""
    first = await start_proxy(config)
    apps = [first, await start_proxy(config) if shared else first]
    return apps, [app.client(key=TEAM) for app in apps]


async def ask(client: openai.AsyncOpenAI) -> int | openai.RateLimitError:
    """One chat request: 200, or the 429 raised by the SDK."""
    try:
        async with asyncio.timeout(GUARD):
            await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}])
    except openai.RateLimitError as refused:
        return refused
    return 200


async def ask_until_refused(client: openai.AsyncOpenAI, attempts: int = 200) -> tuple[int, openai.RateLimitError]:
    """Requests until one is refused (token counts settle after each answer, in the background)."""
    for accepted in range(attempts):
        outcome = await ask(client)
        if isinstance(outcome, openai.RateLimitError):
            return accepted, outcome
        await asyncio.sleep(0.05)
    raise AssertionError("never refused")


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis"])
async def test_one_rpm_holds_across_replicas(
    shared: bool, provider: FakeProvider, redis_server: RedisServer, start_proxy
) -> None:
    redis = {"url": redis_server.url, "timeout": HEALTHY} if shared else None
    apps, clients = await replicas(start_proxy, limited_config(provider, redis, **{"rate-limit": {"rpm": 20}}), shared)
    outcomes = await asyncio.gather(*(ask(clients[i % 2]) for i in range(40)))  # twice the rpm, across both
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    assert outcomes.count(200) == 20 and len(refused) == 20
    for refusal in refused:
        assert refusal.code == "rate_limit_exceeded" and "rpm" in refusal.message
        assert 1 <= int(refusal.response.headers["Retry-After"]) <= 60
    assert len(provider.received) == 20  # nothing refused reached the upstream
    if shared:  # one script per admission (40); the 20 answers settle in a few batched scripts: nothing else
        scripts = await eventually_settled(redis_server, 41)
        assert 41 <= scripts <= 50
        # Without a budget, the key's usage is still kept by the month, for its ClientKey status.
        registries = [app.proxy.metrics.registry for app in apps]
        used = sum(r.get_sample_value("cliproxy_client_tokens_total", {"client": "team", "direction": d}) or 0
                   for r in registries for d in ("input", "output"))  # fmt: skip
        async with Redis.from_url(redis_server.url) as redis:
            assert int(await redis.get(budget_key("team", period(None, time.time())[0])) or 0) == used > 0


async def eventually_settled(server: RedisServer, least: int) -> int:
    """The scripts Redis ran once at least ``least`` ran and the count stopped moving (a NOSCRIPT answer, met by
    the first calls after a start, fails and is not counted)."""
    ran, last = 0, -1
    async with Redis.from_url(server.url) as redis:
        for _ in range(100):
            stats = await redis.info("commandstats")
            ran = sum(row["calls"] - row["failed_calls"] - row["rejected_calls"]
                      for name, row in stats.items() if name in ("cmdstat_evalsha", "cmdstat_eval"))  # fmt: skip
            if ran >= least and ran == last:
                break
            last = ran
            await asyncio.sleep(0.15)  # longer than a settle flush (0.1 s)
    return ran


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis"])
async def test_tpm_and_budget_count_the_tokens_answers_used(
    shared: bool, provider: FakeProvider, redis_server: RedisServer, start_proxy
) -> None:
    redis = {"url": redis_server.url, "timeout": HEALTHY} if shared else None
    per_minute = limited_config(provider, redis, **{"rate-limit": {"tpm": 1}})
    apps, (first, second) = await replicas(start_proxy, per_minute, shared)
    assert await ask(first) == 200
    if shared:  # answers settle in batches, within Shared.FLUSH (0.1 s)
        await tokens_counted(redis_server, "cliproxy:{team}:tpm")
    accepted, refusal = await ask_until_refused(second)  # the other replica sees the tokens the first one used
    assert accepted == 0
    assert "tpm" in refusal.message and int(refusal.response.headers["Retry-After"]) <= 60

    apps[0].rewrite(limited_config(provider, redis, budget={"tokens": 30, "per": "day"}))
    await asyncio.sleep(0.3)  # the reload tick (0.05 s)
    accepted, refusal = await ask_until_refused(first)
    assert accepted >= 1 and "budget" in refusal.message
    assert int(refusal.response.headers["Retry-After"]) <= 86400


async def tokens_counted(server: RedisServer, key: str) -> None:
    async with Redis.from_url(server.url) as redis:
        for _ in range(100):
            if await redis.exists(key):
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"{key} never counted")


async def test_a_refusal_after_a_keepalive_opened_the_stream_is_an_error_event(
    provider: FakeProvider, start_proxy
) -> None:
    """Every credential rests at the start, so the keepalive opens the stream before the first attempt, where
    the client's limits are checked: their refusal then reaches the client in the stream, not as a new answer."""
    config = limited_config(provider, None, **{"rate-limit": {"rpm": 1}})
    config.update({"max-retry-interval": 5, "streaming": {"keepalive-seconds": 0.05}})
    running = await start_proxy(config)
    client = running.client(key=TEAM)
    provider.state.fail_next("key-a", Fault(status=429, headers={"Retry-After": "0.4"}))
    first = asyncio.ensure_future(  # admitted (rpm 1 spent); its 429 rests the credential 0.4 s, then it retries
        client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}])
    )
    await eventually(lambda: len(provider.received) == 1)
    body = {"model": "small", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=GUARD)) as http,
        http.post(f"{running.url}/v1/chat/completions", headers={"Authorization": f"Bearer {TEAM}"}, json=body) as raw,
    ):
        assert raw.status == 200  # the keepalive's
        text = await raw.text()
    assert text.startswith(": keep-alive") and "over its rpm limit" in text and "rate_limit_error" in text
    assert (await first).choices[0].message.content
    assert len(provider.received) == 2  # the first request's two attempts; the refused stream reached nothing


def team(**limits: Any) -> Client:
    return client_of(ClientKey.model_validate({"name": "team", "api-key": TEAM, **limits}))


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis"])
async def test_max_parallel_frees_a_slot_when_an_answer_settles(shared: bool, redis_server: RedisServer) -> None:
    limits = Limits(CollectorRegistry())
    limits.configure(RedisSettings(url=redis_server.url, timeout=HEALTHY) if shared else None)
    client = team(**{"rate-limit": {"max-parallel": 2}})
    first, second, third = [await limits.admit(client) for _ in range(3)]
    assert first.allowed and second.allowed
    assert not third.allowed and third.limit == "max-parallel" and third.retry_after == 1
    limits.settle(client, first, 0)  # frees its slot at once: the flush runs on the loop's next turn
    await asyncio.sleep(0)
    await asyncio.gather(*getattr(limits.engine, "flushing", ()))
    assert (await limits.admit(client)).allowed
    assert not (await limits.admit(client)).allowed
    await limits.close()


async def test_redis_killed_mid_load_applies_allow_then_enforces_again_once_back(
    provider: FakeProvider, redis_server: RedisServer, start_proxy, caplog: pytest.LogCaptureFixture
) -> None:
    redis = {"url": redis_server.url, "timeout": 0.5}  # a loaded CI box: the bound, not a speed
    config = limited_config(provider, redis, **{"rate-limit": {"rpm": 5}})
    config["openai-compatibility"][0]["rate-limit"] = {"rpm": 1000}  # the credential's check meets the outage too
    apps, clients = await replicas(start_proxy, config, True)
    before = await asyncio.gather(*(ask(clients[i % 2]) for i in range(8)))
    assert before.count(200) == 5
    caplog.set_level(logging.WARNING, "cliproxy.limits")
    caplog.clear()  # a settle that timed out on a loaded box before the kill is another outage
    redis_server.kill()
    during = await asyncio.gather(*(ask(clients[i % 2]) for i in range(20)))  # none hangs past GUARD
    assert during == [200] * 20  # on-error: allow (the default)
    for app in apps:
        registry = app.proxy.metrics.registry
        assert (registry.get_sample_value("cliproxy_limit_store_unavailable_total", {"outcome": "allowed"}) or 0) > 0
    outages = [r for r in caplog.records if "redis unreachable" in r.getMessage()]
    assert len(outages) == 2  # once per replica per outage, not once per request
    redis_server.start()  # empty: this Redis keeps nothing across a restart
    accepted, refusal = await ask_until_refused(clients[0])
    assert accepted >= 5 and "rpm" in refusal.message  # counting again; the refusal means Redis answered


async def test_a_frozen_redis_costs_a_check_its_timeout_then_counting_resumes(redis_server: RedisServer) -> None:
    """A Redis that stops answering without closing its socket (SIGSTOP): the pipelined connection's replies
    never come, so each check ends at ``timeout``, the connection is dropped, and a new one counts again."""
    limits = Limits(CollectorRegistry())
    limits.configure(RedisSettings(url=redis_server.url, timeout=0.3))
    client = team(**{"rate-limit": {"rpm": 1000}})
    assert (await limits.admit(client)).counted
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        async with asyncio.timeout(GUARD):
            frozen = await asyncio.gather(*(limits.admit(client) for _ in range(5)))
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert all(v.allowed and not v.counted for v in frozen)  # on-error: allow, and nothing to settle
    for _ in range(200):  # the backoff (0.1 s, doubling) passes, and a new connection is made
        verdict = await limits.admit(client)
        if verdict.counted:
            break
        await asyncio.sleep(0.02)
    assert verdict.allowed and verdict.counted
    async with Redis.from_url(redis_server.url) as redis:
        counted = int(await redis.hget("cliproxy:{team}:rpm", "sum") or 0)
    assert counted in (2, 7)  # before and after; the 5 written while it was frozen may run when it thaws
    await limits.close()


async def test_redis_unreachable_under_deny_refuses_with_503_quickly(
    provider: FakeProvider, redis_server: RedisServer, start_proxy
) -> None:
    redis = {"url": redis_server.url, "timeout": 0.5, "on-error": "deny"}
    running = await start_proxy(limited_config(provider, redis, **{"rate-limit": {"rpm": 100}}))
    assert await ask(running.client(key=TEAM)) == 200
    redis_server.kill()
    for _ in range(3):
        with pytest.raises(openai.InternalServerError) as refused:
            async with asyncio.timeout(GUARD):
                await running.client(key=TEAM).chat.completions.create(
                    model="small", messages=[{"role": "user", "content": "hi"}]
                )
        assert refused.value.status_code == 503 and refused.value.code == "limits_unavailable"
        assert refused.value.response.headers["Retry-After"] == "1"
    denied = running.proxy.metrics.registry.get_sample_value(
        "cliproxy_limit_store_unavailable_total", {"outcome": "denied"}
    )
    assert denied == 3
    assert len(provider.received) == 1


# -- upstream credentials: rpm/tpm and cooldowns held across replicas ---------------------------------------


def two_credentials(provider: FakeProvider, redis: dict[str, Any] | None, **limit: int) -> dict[str, Any]:
    """key-a first (priority 1) with its own rate limit, key-b behind it; plain api-keys, no client limits."""
    limited = compat_block(provider.url, keys=("key-a",), priority=1, **{"rate-limit": limit})
    backup = compat_block(provider.url, keys=("key-b",), name="backup")
    config = base_config(**{"openai-compatibility": [limited, backup]})
    if redis is not None:
        config["redis"] = redis
    return config


async def plain(client: openai.AsyncOpenAI) -> None:
    async with asyncio.timeout(GUARD):
        await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis"])
async def test_a_credential_over_its_rpm_is_skipped_on_every_replica(
    shared: bool, provider: FakeProvider, redis_server: RedisServer, start_proxy
) -> None:
    redis = {"url": redis_server.url, "timeout": HEALTHY} if shared else None
    first = await start_proxy(two_credentials(provider, redis, rpm=6))
    second = await start_proxy(two_credentials(provider, redis, rpm=6)) if shared else first
    clients = (first.client(), second.client())
    await asyncio.gather(*(plain(clients[i % 2]) for i in range(16)))
    keys = [r.key for r in provider.received]
    assert keys.count("key-a") == 6 and keys.count("key-b") == 10  # over its rpm: the next one, not a 429


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis"])
async def test_a_client_refused_spends_nothing_of_a_limited_credential(
    shared: bool, provider: FakeProvider, redis_server: RedisServer, start_proxy
) -> None:
    redis = {"url": redis_server.url, "timeout": HEALTHY} if shared else None
    config = two_credentials(provider, redis, rpm=3)
    config["client-keys"] = [{"name": "team", "api-key": TEAM, "rate-limit": {"rpm": 4}}]
    first = await start_proxy(config)
    second = await start_proxy(config) if shared else first
    outcomes = [await ask((first, second)[i % 2].client(key=TEAM)) for i in range(6)]
    assert outcomes[:4] == [200] * 4 and all(isinstance(o, openai.RateLimitError) for o in outcomes[4:])
    keys = [r.key for r in provider.received]
    assert keys == ["key-a"] * 3 + ["key-b"]  # the two the client was refused spent nothing of key-a's rpm
    if shared:  # the client's check for each request (6), key-a's reservation for each one admitted (4; key-b has
        # no limit to check), then the answers' settles, batched (1 to 4)
        assert 11 <= await eventually_settled(redis_server, 11) <= 10 + 4


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis"])
async def test_a_request_that_ends_before_any_upstream_counts_and_gives_its_parallel_slot_back(
    shared: bool, provider: FakeProvider, redis_server: RedisServer, start_proxy
) -> None:
    """The admission is asked as the request arrives: a request refused before any upstream is asked (bad JSON,
    a model out of scope or unknown, every credential resting) counts against the rpm, and its max-parallel slot
    is given back (else a few bad requests would lock the key out for the slot's lease)."""
    config = base_config(**{"openai-compatibility": [compat_block(provider.url)]})
    if shared:
        config["redis"] = {"url": redis_server.url, "timeout": HEALTHY}
    limit = {"rpm": 6, "max-parallel": 1}
    config["client-keys"] = [{"name": "team", "api-key": TEAM, "models": ["small*"], "rate-limit": limit}]
    proxy = await start_proxy(config)
    headers = {"Authorization": f"Bearer {TEAM}"}
    bodies = {400: b"{not json", 403: b'{"model": "other"}', 404: b'{"model": "small-x"}'}  # bad, out of scope, unknown
    async with aiohttp.ClientSession() as session:
        for status, body in bodies.items():
            async with session.post(f"{proxy.url}/v1/chat/completions", data=body, headers=headers) as response:
                assert response.status == status
    assert [await ask(proxy.client(key=TEAM)) for _ in range(3)] == [200] * 3  # each took the one slot, given back
    over = await ask(proxy.client(key=TEAM))
    assert isinstance(over, openai.RateLimitError)  # the 7th of the minute: the three refused before any upstream count
    assert over.code == "rate_limit_exceeded" and "rpm" in over.message


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis"])
async def test_one_request_at_a_time_never_meets_its_own_max_parallel_slot(
    shared: bool, provider: FakeProvider, redis_server: RedisServer, start_proxy
) -> None:
    """An answer's max-parallel slot is given back (in Redis, answered) before the answer goes out, so a client's
    next request never finds its own finished one still holding it (under load, 1 in 12 runs of 30 did)."""
    config = base_config(**{"openai-compatibility": [compat_block(provider.url)]})
    if shared:
        config["redis"] = {"url": redis_server.url, "timeout": HEALTHY}
    config["client-keys"] = [{"name": "team", "api-key": TEAM, "rate-limit": {"max-parallel": 1}}]
    proxy = await start_proxy(config)
    client = proxy.client(key=TEAM)
    assert [await ask(client) for _ in range(30)] == [200] * 30


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis"])
async def test_every_credential_over_its_limit_is_a_429_with_retry_after(
    shared: bool, provider: FakeProvider, redis_server: RedisServer, start_proxy
) -> None:
    redis = {"url": redis_server.url, "timeout": HEALTHY} if shared else None
    block = compat_block(provider.url, keys=("key-a",), **{"rate-limit": {"tpm": 1}})
    config = base_config(**{"openai-compatibility": [block]}, **({"redis": redis} if redis else {}))
    first = await start_proxy(config)
    second = await start_proxy(config) if shared else first
    await plain(first.client())
    client = second.client()
    for _ in range(100):  # the answer's tokens are spent in the background
        try:
            await plain(client)
        except openai.RateLimitError as refused:
            assert refused.code == "model_cooldown"
            assert 1 <= int(refused.response.headers["Retry-After"]) <= 60
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the credential's tpm never held")


async def test_a_429_on_one_replica_benches_the_credential_on_the_others(
    provider: FakeProvider, redis_server: RedisServer, start_proxy
) -> None:
    redis = {"url": redis_server.url, "timeout": HEALTHY}
    config = two_credentials(provider, redis, rpm=1000)
    first, second = await start_proxy(config), await start_proxy(config)
    key_a = next(c for c in second.proxy.runtime.credentials if c.secret == "key-a")
    target = next(t for t in second.proxy.runtime.routes["small"].targets if t.credential is key_a)
    provider.state.fail_next("key-a", Fault(status=429, headers={"Retry-After": "30"}))
    await plain(first.client())  # key-a's 429, then key-b
    await eventually(lambda: second.proxy.health.blocked_for(target, second.proxy.health.clock()) > 25)
    provider.received.clear()
    await plain(second.client())
    assert [r.key for r in provider.received] == ["key-b"]  # the second replica never asked key-a
    await assert_no_secret_in_redis(redis_server, (b"key-a", b"key-b"))

    third = await start_proxy(config)  # a replica started later learns it from the resync
    target = next(t for t in third.proxy.runtime.routes["small"].targets if t.credential.secret == "key-a")
    await eventually(lambda: third.proxy.health.blocked_for(target, third.proxy.health.clock()) > 25)

    redis_server.kill()  # every replica's subscription drops; each subscribes again once Redis is back
    redis_server.start()
    async with Redis.from_url(redis_server.url) as redis:
        await eventually_subscribed(redis, 3)
        for _ in range(200):  # the empty Redis learns key-a's rest again from the replicas that hold it
            if await redis.hexists(KEY, orjson.dumps([key_a.id, "up-small"])):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no replica announced its rests again")
    provider.state.fail_next("key-b", Fault(status=401))
    with pytest.raises(openai.InternalServerError):  # key-a rests, key-b is refused: the 502 upstream_auth_error
        await plain(first.client())
    target = next(t for t in second.proxy.runtime.routes["small"].targets if t.credential.secret == "key-b")
    await eventually(lambda: second.proxy.health.blocked_for(target, second.proxy.health.clock()) > 1000)


async def test_a_forged_or_malformed_cooldown_message_is_ignored(
    provider: FakeProvider, redis_server: RedisServer, start_proxy
) -> None:
    running = await start_proxy(two_credentials(provider, {"url": redis_server.url, "timeout": HEALTHY}, rpm=1000))
    key_a = next(c for c in running.proxy.runtime.credentials if c.secret == "key-a")
    async with Redis.from_url(redis_server.url) as redis:
        await eventually_subscribed(redis)
        forever = b'["%s", "up-small", 1e999, "quota"]' % key_a.id.encode()  # infinite once parsed
        for message in (b"not json", b"[1, 2]", forever, orjson.dumps([key_a.id, "up-small", -5, "auth"]),
                        orjson.dumps([key_a.id, "up-small", 60, "transient"]),
                        orjson.dumps(["unknown-credential", "up-small", 60, "quota"])):  # fmt: skip
            await redis.publish(CHANNEL, message)
        await redis.publish(CHANNEL, orjson.dumps([key_a.id, "up-large", 10**12, "quota"]))  # well formed, long
    health = running.proxy.health
    await eventually(lambda: (key_a.id, "up-large") in health.cooldowns)
    assert set(health.cooldowns) == {(key_a.id, "up-large")}
    assert 86000 < health.cooldowns[(key_a.id, "up-large")].until - health.clock() <= 86400  # a day at most


async def eventually_subscribed(redis: Redis, replicas: int = 1) -> None:
    for _ in range(200):
        if (await redis.pubsub_numsub(CHANNEL))[0][1] >= replicas:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no replica subscribed")


async def assert_no_secret_in_redis(server: RedisServer, secrets: tuple[bytes, ...]) -> None:
    """Redis names credentials by id and clients by name: no key is in any key name, field or value."""
    async with Redis.from_url(server.url) as redis:
        stored = [name async for name in redis.scan_iter()]
        for name in list(stored):
            if await redis.type(name) == b"hash":
                stored += [item for pair in (await redis.hgetall(name)).items() for item in pair]
            elif await redis.type(name) == b"string":
                stored.append(await redis.get(name))
    assert len(stored) > 3 and not [item for item in stored for secret in secrets if secret in item]
