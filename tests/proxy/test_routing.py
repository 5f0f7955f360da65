"""The model table and credential health: prefix, alias, exclusion, priority, rotation, cooldown, limits."""

from __future__ import annotations

from typing import Any

import pytest

from cliproxy_proxy.config import Cooldowns, parse_config
from cliproxy_proxy.health import Health
from cliproxy_proxy.runtime import Runtime, build_runtime
from cliproxy_proxy.translate.codec import status_kind


def runtime_of(document: dict[str, Any]) -> Runtime:
    return build_runtime(parse_config(document), None)


def groq(key: str, **extra: Any) -> dict[str, Any]:
    return {"api-key": key, "models": [{"name": "llama-70b", "alias": "llama"}], **extra}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_prefix_registers_both_ids_unless_forced() -> None:
    loose = runtime_of({"groq": [groq("k", prefix="prod")]})
    assert set(loose.routes) == {"prod/llama", "llama"}
    forced = runtime_of({"force-model-prefix": True, "groq": [groq("k", prefix="prod")]})
    assert set(forced.routes) == {"prod/llama"}
    assert forced.hints["llama"] == ("prod/llama",)


def test_force_prefix_can_be_set_per_entry() -> None:
    runtime = runtime_of(
        {"groq": [groq("a", prefix="strict", **{"force-model-prefix": True}), groq("b", prefix="loose")]}
    )
    assert set(runtime.routes) == {"strict/llama", "loose/llama", "llama"}
    assert [t.credential.secret for t in runtime.routes["llama"].targets] == ["b"]


def test_force_prefix_keeps_unprefixed_credentials_bare() -> None:
    runtime = runtime_of({"force-model-prefix": True, "groq": [groq("a", prefix="prod"), groq("b")]})
    assert {t.credential.prefix for t in runtime.routes["llama"].targets} == {None}
    assert "llama" not in runtime.hints


def test_alias_maps_to_the_upstream_name() -> None:
    target = runtime_of({"groq": [groq("k")]}).routes["llama"].targets[0]
    assert (target.exposed_model, target.upstream_model) == ("llama", "llama-70b")
    assert target.rewrite is not None


def test_repeated_alias_pools_upstream_models() -> None:
    runtime = runtime_of({"mistral": [{"api-key": "k", "models": [
        {"name": "mistral-large", "alias": "best"}, {"name": "mistral-medium", "alias": "best"}]}]})  # fmt: skip
    assert [t.upstream_model for t in runtime.routes["best"].targets] == ["mistral-large", "mistral-medium"]


def test_excluded_models_are_globs_on_either_name() -> None:
    models = [{"name": n} for n in ("gpt-4o", "gpt-4o-preview", "o1-mini", "claude-x")] + [
        {"name": "cheap", "alias": "hidden-alias"}]  # fmt: skip
    runtime = runtime_of(
        {
            "openrouter": [
                {"api-key": "k", "models": models, "excluded-models": ["*-preview", "O1-*", "*claude*", "hidden-*"]}
            ]
        }
    )
    assert set(runtime.routes) == {"gpt-4o"}


def test_default_base_urls_come_from_the_catalog() -> None:
    runtime = runtime_of({"groq": [groq("k")], "deepseek": [groq("k")], "openrouter": [groq("k")]})
    assert {c.provider: c.base_url for c in runtime.credentials} == {
        "groq": "https://api.groq.com/openai/v1",
        "deepseek": "https://api.deepseek.com",
        "openrouter": "https://openrouter.ai/api/v1",
    }


def test_priority_groups_highest_first() -> None:
    runtime = runtime_of({"groq": [groq("low", priority=1), groq("high", priority=5)], "together": [groq("mid")]})
    groups = runtime.routes["llama"].groups
    assert [[t.credential.priority for t in g] for g in groups] == [[5], [1], [0]]


def test_models_list_body_carries_prefixed_ids_and_owner() -> None:
    import orjson

    body = orjson.loads(runtime_of({"groq": [groq("k", prefix="p")]}).models_body)
    assert body["object"] == "list"
    assert [(m["id"], m["owned_by"], m["object"]) for m in body["data"]] == [
        ("llama", "groq", "model"), ("p/llama", "groq", "model")]  # fmt: skip


SESSION_FILES = {
    "kiro": '{"accessToken": "aoa-1", "refreshToken": "aor-1", "expiresAt": "2099-01-01T00:00:00.000Z", '
    '"authMethod": "social", "provider": "Github", "region": "eu-central-1", "profileArn": "arn:aws:p"}',
    "minimax": '{"access_token": "mm-1"}',
    "roo": '{"token": "roo-1", "userId": "u"}',
    "kilo": '{"kilo": {"type": "oauth", "access": "kilo-1", "refresh": "kilo-1", "accountId": "org-7"}}',
    "ampcode": '{"apiKey@https://ampcode.com/": "sgamp_1"}',
}


def test_session_blocks_read_their_vendors_token_files(tmp_path: Any) -> None:
    """Each OAuth / session block reads its vendor's own file and is called the way that vendor's tool calls."""
    from cliproxy_proxy.loader import ConfigSource
    from cliproxy_proxy.translate.kiro import KiroCodec

    document: dict[str, Any] = {"cursor": [{"auth-token": "sk-cursor-1", "models": [{"name": "c"}]}]}
    for block, text in SESSION_FILES.items():
        (tmp_path / f"{block}.json").write_text(text)
        document[block] = [{"token-file": f"{block}.json", "models": [{"name": f"{block}-model"}]}]
    runtime = build_runtime(parse_config(document), ConfigSource(tmp_path / "config.yaml"))
    by_block = {c.provider: c for c in runtime.credentials}
    expected = {
        "kiro": ("kiro", "https://q.eu-central-1.amazonaws.com", "Authorization: Bearer aoa-1"),
        "minimax": ("openai-chat", "https://api.minimax.io/v1", "Authorization: Bearer mm-1"),
        "roo": ("openai-chat", "https://api.roocode.com/proxy/v1", "Authorization: Bearer roo-1"),
        "kilo": ("openai-chat", "https://api.kilo.ai/api/gateway", "Authorization: Bearer kilo-1"),
        "ampcode": ("anthropic-messages", "https://ampcode.com/api/provider/anthropic", "x-api-key: sgamp_1"),
        "cursor": ("openai-chat", "http://127.0.0.1:3000/v1", "Authorization: Bearer sk-cursor-1"),
    }
    for block, (wire, base_url, auth) in expected.items():
        credential = by_block[block]
        assert (credential.wire.value, credential.base_url) == (wire, base_url), block
        assert credential.session is not None and credential.secret is None, block
        assert auth in credential.head("/chat/completions").decode(), block
    assert "X-KILOCODE-ORGANIZATIONID: org-7" in by_block["kilo"].head("/x").decode()
    kiro = by_block["kiro"]
    assert isinstance(kiro.codec, KiroCodec) and kiro.codec.profile_arn == "arn:aws:p"
    assert "amz-sdk-invocation-id" in kiro.head("/generateAssistantResponse").decode()
    assert all(not c.discovers_models for c in runtime.credentials)


def test_a_broken_token_file_is_a_config_error_naming_the_entry(tmp_path: Any) -> None:
    from cliproxy_proxy.config import ConfigError
    from cliproxy_proxy.loader import ConfigSource

    (tmp_path / "kiro.json").write_text('{"refreshToken": "aor-secret"}')
    with pytest.raises(ConfigError) as raised:
        build_runtime(parse_config({"kiro": [{"token-file": "kiro.json"}]}), ConfigSource(tmp_path / "c.yaml"))
    assert str(raised.value) == "kiro[0].token-file: Kiro token file has no accessToken"


def test_proxy_url_direct_overrides_the_global_proxy() -> None:
    runtime = runtime_of({"proxy-url": "http://egress:3128", "groq": [groq("a"), groq("b", **{"proxy-url": "direct"})]})
    assert [c.proxy for c in runtime.credentials] == ["http://egress:3128", None]


@pytest.mark.parametrize(
    ("status", "reason"),
    [(429, "quota"), (401, "auth"), (402, "auth"), (403, "auth"), (404, "not_found"), (408, "retryable"),
     (500, "retryable"), (503, "retryable"), (400, "fatal"), (413, "fatal"), (422, "fatal")],
)  # fmt: skip
def test_status_kinds_follow_cliproxyapi(status: int, reason: str) -> None:
    assert status_kind(status) == reason


def test_cooldown_durations_and_quota_backoff() -> None:
    clock = Clock()
    health = Health(clock)
    runtime = runtime_of({"groq": [groq("k")]})
    health.sync(runtime.credentials)
    target = runtime.routes["llama"].targets[0]
    cfg = Cooldowns()
    assert [health.fail(target, "quota", None, cfg) for _ in range(4)] == [1, 2, 4, 8]
    assert health.fail(target, "quota", 7.5, cfg) == 7.5
    assert health.fail(target, "auth", None, cfg) == 1800
    assert health.fail(target, "not_found", None, cfg) == 43200
    assert health.fail(target, "quota", 1e12, cfg) == 1800  # an absurd Retry-After is capped
    for _ in range(2000):  # a key answering 429 for hours: the exponent must not overflow a float
        health.fail(target, "quota", 1, cfg)
    assert health.fail(target, "quota", None, cfg) == 1800
    assert health.blocked_for(target, clock.now) == 1800
    clock.now += 1800
    assert health.blocked_for(target, clock.now) == 0
    health.succeed(target)
    assert health.fail(target, "quota", None, cfg) == 1  # success resets the backoff


def test_disable_cooling_per_credential_and_globally() -> None:
    for document in (
        {"groq": [groq("k", **{"disable-cooling": True})]},
        {"disable-cooling": True, "groq": [groq("k")]},
    ):
        health = Health(Clock())
        runtime = runtime_of(document)
        target = runtime.routes["llama"].targets[0]
        assert health.fail(target, "auth", None, Cooldowns()) == 0
        assert health.blocked_for(target, 1000.0) == 0


def test_round_robin_rotates_and_fill_first_sticks() -> None:
    runtime = runtime_of({"groq": [groq("a"), groq("b"), groq("c")]})
    route = runtime.routes["llama"]
    health = Health(Clock())
    picks = [health.pick(route, "round-robin", set()) for _ in range(6)]
    assert [p.credential.secret for p in picks if p] == ["a", "b", "c", "a", "b", "c"]
    picks = [health.pick(route, "fill-first", set()) for _ in range(3)]
    assert [p.credential.secret for p in picks if p] == ["a", "a", "a"]


def test_pick_skips_cooling_and_falls_to_lower_priority() -> None:
    clock = Clock()
    runtime = runtime_of({"groq": [groq("top", priority=2), groq("backup")]})
    route = runtime.routes["llama"]
    health = Health(clock)
    top = route.groups[0][0]
    assert health.pick(route, "round-robin", set()) is top
    health.fail(top, "auth", None, Cooldowns(), route)
    chosen = health.pick(route, "round-robin", set())
    assert chosen is not None and chosen.credential.secret == "backup"
    health.fail(chosen, "quota", 5, Cooldowns())
    assert health.pick(route, "round-robin", set()) is None
    assert health.soonest(route) == 5


def test_a_held_credential_is_skipped_until_its_hold_ends() -> None:
    clock = Clock()
    runtime = runtime_of({"groq": [groq("k", **{"rate-limit": {"rpm": 2}})]})
    route = runtime.routes["llama"]
    health = Health(clock)
    health.sync(runtime.credentials)
    health.hold(runtime.credentials[0], 30)  # limits.py found it over its rpm
    assert health.pick(route, "round-robin", set()) is None
    assert health.soonest(route) == pytest.approx(30.0)
    clock.now += 30
    assert health.pick(route, "round-robin", set()) is not None


def test_state_survives_a_reload_of_unchanged_credentials() -> None:
    clock = Clock()
    health = Health(clock)
    first = runtime_of({"groq": [groq("k"), groq("gone")]})
    health.sync(first.credentials)
    health.fail(first.routes["llama"].targets[0], "auth", None, Cooldowns())
    health.fail(first.routes["llama"].targets[1], "auth", None, Cooldowns())
    second = runtime_of({"groq": [groq("k")], "api-keys": ["new"]})
    health.sync(second.credentials)
    assert health.blocked_for(second.routes["llama"].targets[0], clock.now) == 1800
    assert len(health.cooldowns) == 1


def _pool(*keys: str) -> tuple[Health, Clock, Any]:
    clock = Clock()
    health = Health(clock)
    runtime = runtime_of({"groq": [groq(k) for k in keys]})
    health.sync(runtime.credentials)
    return health, clock, runtime.routes["llama"]


def test_transient_faults_eject_only_in_a_row_and_for_longer_each_time() -> None:
    health, clock, route = _pool("a", "b")
    a = route.targets[0]
    cfg = Cooldowns()
    assert [health.fail(a, "transient", None, cfg, route) for _ in range(2)] == [0, 0]
    health.succeed(a)  # a success ends the streak
    assert [health.fail(a, "transient", None, cfg, route) for _ in range(3)] == [0, 0, 30]
    assert health.blocked_for(a, clock.now) == 30
    clock.now += 30
    assert [health.fail(a, "transient", None, cfg, route) for _ in range(3)] == [0, 0, 60]  # base x 2
    assert health.fail(a, "transient", None, cfg, route) == 0  # failing while out (panic) does not extend it
    seconds = 60.0
    for _ in range(10):
        clock.now += seconds
        seconds = sum(health.fail(a, "transient", None, cfg, route) for _ in range(3))
    assert seconds == 300  # capped at transient-max
    clock.now += 300 + 30 * 20  # each base period spent healthy forgives one ejection
    assert [health.fail(a, "transient", None, cfg, route) for _ in range(3)] == [0, 0, 30]


def test_at_most_half_the_pool_is_ejected_and_then_the_streak_keeps_counting() -> None:
    health, clock, route = _pool("a", "b", "c", "d")
    cfg = Cooldowns()
    ejected = [sum(health.fail(t, "transient", None, cfg, route) for _ in range(3)) for t in route.targets]
    assert ejected == [30, 30, 0, 0]
    clock.now += 30
    assert health.fail(route.targets[2], "transient", None, cfg, route) == 30  # room again: the fourth in a row
    single, _, alone = _pool("only")
    assert sum(single.fail(alone.targets[0], "transient", None, cfg, alone) for _ in range(3)) == 30  # at least one


def test_panic_tries_the_least_recently_failed_when_every_credential_is_ejected() -> None:
    health, clock, route = _pool("a", "b")
    a, b = route.targets
    cfg = Cooldowns(max_ejection_percent=100)
    for target in (b, a):  # b fails first, so it has rested longest
        for _ in range(3):
            health.fail(target, "transient", None, cfg, route)
        clock.now += 1
    assert health.soonest(route) == 0  # no waiting: panic mode routes now
    assert health.pick(route, "round-robin", set()) is b
    assert health.pick(route, "round-robin", {id(b)}) is a
    health.succeed(b)  # it served: back in rotation, while a's ejection runs on
    assert health.pick(route, "round-robin", set()) is b
    assert health.pick(route, "round-robin", {id(b)}) is None  # b is healthy (tried): no panic


def test_panic_never_overrides_a_providers_verdict() -> None:
    health, _, route = _pool("a", "b")
    a, b = route.targets
    cfg = Cooldowns(max_ejection_percent=100)
    for _ in range(3):
        health.fail(a, "transient", None, cfg, route)
    health.fail(b, "auth", None, cfg, route)
    assert health.pick(route, "round-robin", set()) is a
    health.fail(a, "quota", 20, cfg, route)
    assert health.pick(route, "round-robin", set()) is None
    assert health.soonest(route) == 20
