"""ClientKeys through the real operator: generated keys, rotation, refused references, expiry and usage from Redis.

Each test creates objects through the API as a user would and waits (polling, with a deadline) for the operator's
answer: the generated Secret, the gateway's rendered objects (the key in its Secret, never in its ConfigMap), the
status and its Events. Usage comes from a real redis-server, written by the proxy's own limit engine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from cliproxy_operator.clientkeys import KEY_PREFIX, ROTATE_ANNOTATION
from cliproxy_proxy.clients import client_of
from cliproxy_proxy.config import ClientKey as ClientKeyEntry
from cliproxy_proxy.config import Redis as RedisSettings
from cliproxy_proxy.counters import spend_key
from cliproxy_proxy.limits import ALLOWED, Shared

from ..support.redis_server import RedisServer
from .kube import CLIENTKEYS, CONFIGMAPS, SECRETS, Cluster, OperatorRunner, b64, unb64, wait_for
from .objects import RENDERED, WITHIN, basic_setup, condition, config_of, secret, wait_condition, warning


@pytest.fixture
def fast_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Usage and expiry checked every 0.2 s instead of 30 (read when the operator starts)."""
    monkeypatch.setenv("CLIPROXY_USAGE_SECONDS", "0.2")
    monkeypatch.delenv("CLIPROXY_REDIS_URL", raising=False)


@pytest.fixture
def redis_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    monkeypatch.setenv("CLIPROXY_REDIS_URL", server.url)
    try:
        yield server
    finally:
        server.kill()


def client_key(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": spec}


async def key_file(cluster: Cluster, operator: OperatorRunner, name: str, other_than: str = "") -> str:
    """The key the gateway's Secret holds for ClientKey ``name`` (once it differs from ``other_than``)."""

    async def present() -> str | None:
        rendered = await cluster.get(SECRETS, RENDERED)
        value = unb64((rendered or {}).get("data")).get(f"{name}.client-key")
        return value if value and value != other_than else None

    return await wait_for(present, WITHIN, message=lambda: f"no new key for {name}\n{operator.describe()}")  # type: ignore[no-any-return]


async def generated(cluster: Cluster, name: str) -> str:
    stored = await cluster.get(SECRETS, f"{name}.client-key")
    assert stored is not None
    return unb64(stored["data"])["api-key"]


async def test_a_generated_key_renders_and_rotates(
    fast_usage: None, cluster: Cluster, operator: OperatorRunner
) -> None:
    await basic_setup(cluster, operator)
    await cluster.create(CLIENTKEYS, client_key("alice", models=["gpt*"], rateLimit={"rpm": 30}))
    alice = await wait_condition(cluster, operator, CLIENTKEYS, "alice", "Ready", "True", "Rendered")
    first = await key_file(cluster, operator, "alice")
    assert first.startswith(KEY_PREFIX) and len(first) > 40 and first == await generated(cluster, "alice")
    assert alice["status"]["keySecretName"] == "alice.client-key"
    assert alice["status"]["clientName"] == f"{cluster.namespace}.alice"
    assert first not in json.dumps(alice)
    stored = await cluster.get(SECRETS, "alice.client-key")
    assert stored is not None and stored["metadata"]["ownerReferences"][0]["uid"] == alice["metadata"]["uid"]
    configmap = await cluster.get(CONFIGMAPS, RENDERED)
    assert configmap is not None and first not in json.dumps(configmap)
    entry = config_of(configmap)["client-keys"][0]
    assert entry == {"name": f"{cluster.namespace}.alice", "api-key-file": "alice.client-key", "models": ["gpt*"],
                     "rate-limit": {"rpm": 30}}  # fmt: skip

    # The annotation asks for a new key; the gateway's Secret drops the old one.
    await cluster.patch(CLIENTKEYS, "alice", {"metadata": {"annotations": {ROTATE_ANNOTATION: "2026-12-02"}}})
    second = await key_file(cluster, operator, "alice", other_than=first)
    assert second.startswith(KEY_PREFIX) and second == await generated(cluster, "alice")
    assert first not in json.dumps(unb64((await cluster.get(SECRETS, RENDERED) or {}).get("data")))

    # So does deleting the generated Secret.
    await cluster.delete(SECRETS, "alice.client-key")
    third = await key_file(cluster, operator, "alice", other_than=second)
    assert third not in (first, second) and third == await generated(cluster, "alice")


async def test_a_secret_ref_that_breaks_the_rules_is_refused(
    fast_usage: None, cluster: Cluster, operator: OperatorRunner
) -> None:
    victim = "sk-VICTIM-client-0123456789"
    await basic_setup(cluster, operator)
    await cluster.create(SECRETS, secret("victim-keys", opted_in=False, key=victim))
    await cluster.create(CLIENTKEYS, client_key("thief", secretRef={"name": "victim-keys", "key": "key"}))
    thief = await wait_condition(cluster, operator, CLIENTKEYS, "thief", "Ready", "False", "SecretNotOptedIn")
    assert "cliproxy.io/credential" in condition(thief, "Ready")["message"]
    await warning(cluster, operator, "thief", "SecretNotOptedIn")
    written = json.dumps([await cluster.get(CONFIGMAPS, RENDERED), unb64((await cluster.get(SECRETS, RENDERED) or {})
                          .get("data")), thief, await cluster.events()])  # fmt: skip
    assert victim not in written and b64(victim) not in written

    # A ClientKey named after a Secret that is not the operator's does not take it over.
    await cluster.create(SECRETS, {"metadata": {"name": "bob.client-key"}, "data": {"api-key": b64("theirs")}})
    await cluster.create(CLIENTKEYS, client_key("bob"))
    await wait_condition(cluster, operator, CLIENTKEYS, "bob", "Ready", "False", "SecretNameTaken")
    assert await generated(cluster, "bob") == "theirs"

    # An opted-in Secret, referenced: its key is the client's.
    await cluster.create(SECRETS, secret("carol-key", key="sk-carol-own-key"))
    await cluster.create(CLIENTKEYS, client_key("carol", secretRef={"name": "carol-key", "key": "key"}))
    await wait_condition(cluster, operator, CLIENTKEYS, "carol", "Ready", "True")
    assert await key_file(cluster, operator, "carol") == "sk-carol-own-key"
    await cluster.patch(SECRETS, "carol-key", {"data": {"key": b64("sk-carol-rotated")}})  # her owner rotates it
    assert await key_file(cluster, operator, "carol", other_than="sk-carol-own-key") == "sk-carol-rotated"


async def test_expiry_is_a_condition_that_turns_on_time(
    fast_usage: None, cluster: Cluster, operator: OperatorRunner
) -> None:
    await basic_setup(cluster, operator)
    await cluster.create(CLIENTKEYS, client_key("temp", expires="2099-01-01T00:00:00Z", budget={"tokens": 10}))
    temp = await wait_condition(cluster, operator, CLIENTKEYS, "temp", "Expired", "False", "NotExpired")
    assert condition(temp, "BudgetExhausted")["reason"] == "UsageNotShared"  # no Redis: nothing shared to read
    soon = (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    await cluster.patch(CLIENTKEYS, "temp", {"spec": {"expires": soon}})  # then the timer turns it, unprompted
    temp = await wait_condition(cluster, operator, CLIENTKEYS, "temp", "Expired", "True", "Expired")
    assert condition(temp, "Ready")["status"] == "False"
    await warning(cluster, operator, "temp", "Expired")
    configmap = await cluster.get(CONFIGMAPS, RENDERED)  # still rendered: the proxy refuses it to the second
    assert configmap is not None and config_of(configmap)["client-keys"][0]["expires"] == soon


async def test_status_shows_the_period_usage_the_proxies_counted_in_redis(
    fast_usage: None, redis_server: RedisServer, cluster: Cluster, operator: OperatorRunner
) -> None:
    await basic_setup(cluster, operator)
    await cluster.create(CLIENTKEYS, client_key("dave", budget={"tokens": 1000, "per": "day"}))
    await cluster.create(CLIENTKEYS, client_key("erin"))  # no budget: its usage is shown by the month all the same
    dave = await wait_condition(cluster, operator, CLIENTKEYS, "dave", "BudgetExhausted", "False", "WithinBudget")
    period = datetime.now(UTC).strftime("%Y-%m-%d")
    assert dave["status"]["usage"] == {"period": period, "tokens": 0, "spendUSD": "0"}

    # The proxy's own engine settles two answers, as two replicas would.
    entry = ClientKeyEntry.model_validate({"name": f"{cluster.namespace}.dave", "api-key": "k",
                                           "budget": {"tokens": 1000, "per": "day"}})  # fmt: skip
    client = client_of(entry)
    outages = Counter("outages", "", ["outcome"], registry=CollectorRegistry())
    engine = Shared(RedisSettings(url=redis_server.url, timeout=5), outages)
    erin = client_of(ClientKeyEntry.model_validate({"name": f"{cluster.namespace}.erin", "api-key": "e"}))
    try:
        for tokens in (400, 700):
            engine.settle(client, await engine.admit(client), tokens)
        engine.settle(erin, ALLOWED, 300, 2_500)  # an unlimited key is never admitted by Redis, only settled
        await engine.redis.incrby(spend_key(client.name, period), 1_234_500)  # their cost, in micro-dollars
    finally:
        await engine.close()  # settles what is tallied
    dave = await wait_condition(cluster, operator, CLIENTKEYS, "dave", "BudgetExhausted", "True", "TokenBudgetSpent")
    assert dave["status"]["usage"] == {"period": period, "tokens": 1100, "spendUSD": "1.2345"}
    await warning(cluster, operator, "dave", "BudgetExhausted")
    erin_usage = {"period": datetime.now(UTC).strftime("%Y-%m"), "tokens": 300, "spendUSD": "0.0025"}

    async def erin_shows_its_usage() -> bool:
        erin = await cluster.get(CLIENTKEYS, "erin") or {}
        return erin.get("status", {}).get("usage") == erin_usage

    await wait_for(erin_shows_its_usage, message=lambda: operator.describe())
    await cluster.settle()  # Redis is read every 0.2 s; while nothing changes, the API hears nothing of it
    assert [e["reason"] for e in await cluster.events("dave") if e.get("type") == "Warning"] == ["BudgetExhausted"]
