"""ClientKeys as pure functions: their entries in the proxy's own config contract, and their statuses."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from cliproxy_operator.clientkeys import render_client_keys, status_of
from cliproxy_operator.render import CONFIG_KEY, SecretConsent, render
from cliproxy_operator.usage import Usage, observe

from .objects import credential, load, route

SECRETS = {"llm-keys": {"openrouter": "sk-or-AAA"}}
CREDENTIALS = [credential("openrouter", "openrouter", "openrouter", baseURL="https://openrouter.ai/api/v1")]
ROUTES = [route("team-a", "openrouter", models=("anthropic/claude-sonnet-4", "openai/gpt-4o"))]

NS = "team-a"
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
USER_KEY = "sk-client-USER-0123456789"


def client_key(name: str, created: str = "2026-01-01T00:00:00Z", **spec: Any) -> dict[str, Any]:
    meta = {"name": name, "uid": f"uid-{name}", "creationTimestamp": created}
    return {"apiVersion": "cliproxy.io/v1alpha1", "kind": "ClientKey", "metadata": meta, "spec": spec}


def rendered(clientkeys: list[dict[str, Any]], generated: dict[str, Any], secrets: dict[str, Any] | None = None,
             consent: SecretConsent | None = None, taken: dict[str, list[str]] | None = None) -> Any:  # fmt: skip
    secrets = {**SECRETS, **(secrets or {})}
    clients = render_client_keys(NS, clientkeys, secrets, consent or SecretConsent(), generated, taken or {})
    return render(ROUTES, CREDENTIALS, secrets, taken, consent, clients=clients)


def test_client_keys_render_into_the_contract_the_proxy_loads(tmp_path: Path) -> None:
    keys = [
        client_key("alice", models=["claude-*"], rateLimit={"rpm": 60, "maxParallel": 2},
                   budget={"tokens": 100000, "per": "day"}, expires="2027-01-01T00:00:00Z"),
        client_key("bob", secretRef={"name": "bob-key", "key": "key"}),
    ]  # fmt: skip
    result = rendered(keys, {"alice": "cpk-ALICE-generated"}, {"bob-key": {"key": USER_KEY}})
    gateway = result.gateways["default"]
    document = json.loads(gateway.config_payload["data"][CONFIG_KEY])
    assert document["client-keys"] == [
        {"name": "team-a.alice", "api-key-file": "alice.client-key", "models": ["claude-*"],
         "rate-limit": {"rpm": 60, "max-parallel": 2}, "budget": {"tokens": 100000, "per": "day"},
         "expires": "2027-01-01T00:00:00Z"},
        {"name": "team-a.bob", "api-key-file": "bob.client-key"},
    ]  # fmt: skip
    assert "cpk-ALICE" not in gateway.config_text and USER_KEY not in gateway.config_text
    assert gateway.secret_data["alice.client-key"] == "cpk-ALICE-generated"
    assert "allow-unauthenticated" not in document  # ClientKeys close the gateway like a client-keys Secret
    assert all(not r.notices for r in result.routes.values())  # ...and no route is told the gateway lacks keys
    runtime = load(gateway, tmp_path)
    assert sorted(runtime.client_keys) == sorted([b"cpk-ALICE-generated", USER_KEY.encode()])
    alice = next(c for c in runtime.clients if c is not None and c.name == "team-a.alice")
    assert alice.allows("claude-sonnet-4") and not alice.allows("gpt-4o") and alice.rate_limit.rpm == 60
    assert {s.client: s.rendered for s in result.clients.values()} == {"team-a.alice": True, "team-a.bob": True}


def test_a_refused_or_broken_client_key_is_left_out_and_the_rest_render() -> None:
    keys = [
        client_key("thief", secretRef={"name": "victim", "key": "key"}),
        client_key("old", "2026-01-01T00:00:00Z", secretRef={"name": "shared", "key": "k"}),
        client_key("copy", "2026-02-01T00:00:00Z", secretRef={"name": "shared", "key": "k"}),
        client_key("naive", expires="2027-01-01T00:00:00"),  # no time zone: the proxy would refuse the config
        client_key("pending"),
        client_key("good"),
        client_key("x" * 121),  # past the CRD's 63: team-a.xxx... is longer than the proxy's 127
    ]
    consent = SecretConsent(not_opted_in=frozenset({"victim"}))
    generated = {"naive": "cpk-N", "good": "cpk-G", "x" * 121: "cpk-X"}
    result = rendered(keys, generated, {"shared": {"k": "sk-SHARED"}}, consent)
    reasons = {name: [p.reason for p in s.problems] for name, s in result.clients.items()}
    assert reasons == {"thief": ["SecretNotOptedIn"], "old": [], "copy": ["KeyInUse"], "naive": ["InvalidSpec"],
                       "pending": ["KeyPending"], "good": [], "x" * 121: ["InvalidName"]}  # fmt: skip
    assert "time zone" in result.clients["naive"].problems[0].message
    assert "at most 127 characters; keep metadata.name to 63" in result.clients["x" * 121].problems[0].message
    document = json.loads(result.gateways["default"].config_text)
    assert [e["name"] for e in document["client-keys"]] == ["team-a.good", "team-a.old"]
    assert list(result.gateways["default"].secret_data).count("old.client-key") == 1


def test_a_key_already_given_by_a_client_keys_secret_is_refused() -> None:
    result = rendered([client_key("dup", secretRef={"name": "s", "key": "k"})], {}, {"s": {"k": "plain-key"}},
                      taken={"default": ["plain-key"]})  # fmt: skip
    assert [p.reason for p in result.clients["dup"].problems] == ["KeyInUse"]


def test_a_client_key_of_a_gateway_without_routes_says_so() -> None:
    result = rendered([client_key("lost", gateway="nowhere")], {"lost": "cpk-L"})
    state = result.clients["lost"]
    assert not state.rendered and [n.reason for n in state.notices] == ["GatewayNotRendered"]
    assert "nowhere" not in result.gateways


def test_status_conditions_follow_expiry_and_the_shared_budget() -> None:
    key = client_key("alice", budget={"tokens": 1000}, expires="2026-12-31T00:00:00Z")
    state = rendered([key], {"alice": "cpk-A"}).clients["alice"]
    problems, fields, wanted = status_of(key, state, NOW, Usage("2026-12", 400), True)
    conditions = {kind: (ok, reason) for kind, ok, reason, _ in wanted}
    assert conditions == {"Ready": (True, "Rendered"), "Expired": (False, "NotExpired"),
                          "BudgetExhausted": (False, "WithinBudget")}  # fmt: skip
    assert fields == {"keySecretName": "alice.client-key", "clientName": "team-a.alice", "models": "*",
                      "usage": {"period": "2026-12", "tokens": 400, "spendUSD": "0"}} and problems == []  # fmt: skip

    problems, _, wanted = status_of(key, state, NOW, Usage("2026-12", 1000), True)
    assert wanted[2][:3] == ("BudgetExhausted", True, "TokenBudgetSpent") and problems[0].reason == "BudgetExhausted"

    later = datetime(2027, 1, 1, tzinfo=UTC)
    problems, _, wanted = status_of(key, state, later, None, False)
    conditions = {kind: (ok, reason) for kind, ok, reason, _ in wanted}
    assert conditions == {"Ready": (False, "Expired"), "Expired": (True, "Expired"),
                          "BudgetExhausted": (False, "UsageNotShared")}  # fmt: skip
    assert [p.reason for p in problems] == ["Expired"]


def test_a_usd_budget_is_spent_when_the_proxies_cost_reaches_it() -> None:
    key = client_key("carl", budget={"usd": 2.5, "per": "day"})
    state = rendered([key], {"carl": "cpk-C"}).clients["carl"]
    _, fields, wanted = status_of(key, state, NOW, Usage("2026-12-02", 900, 2_499_999), True)
    assert fields["usage"]["spendUSD"] == "2.499999" and wanted[2][1:3] == (False, "WithinBudget")
    _, fields, wanted = status_of(key, state, NOW, Usage("2026-12-02", 901, 2_500_000), True)
    assert fields["usage"]["spendUSD"] == "2.5" and wanted[2][1:3] == (True, "UsdBudgetSpent")


async def test_an_unreachable_redis_reads_as_unknown_not_as_zero() -> None:
    """None keeps the statuses' last usage; zeros would tell every spent budget it has been refilled."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    redis = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=5)
    try:
        assert await observe(redis, NS, [client_key("alice", budget={"tokens": 10})], NOW) is None
        assert await observe(redis, NS, [client_key("free")], NOW) is None  # a key without a budget is read too
        assert await observe(redis, NS, [], NOW) == {}  # no key: nothing to ask
    finally:
        await redis.aclose()
