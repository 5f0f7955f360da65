"""The render function: CRs in, the proxy's own config out, loadable by the proxy, deterministic, secrets apart."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml

from cliproxy_operator.render import CONFIG_KEY, render
from cliproxy_proxy.loader import ConfigSource
from cliproxy_proxy.runtime import build_runtime

SECRETS = {"llm-keys": {"openrouter-a": "sk-or-AAA", "openrouter-b": "sk-or-BBB", "claude": "sk-ant-CCC",
                        "vllm": "tok-DDD", "kiro": '{"accessToken": "kiro-EEE"}'}}  # fmt: skip


def credential(name: str, provider: str, *keys: str, **spec: Any) -> dict[str, Any]:
    refs = [{"secretKeyRef": {"name": "llm-keys", "key": k}} for k in keys]
    body: dict[str, Any] = {"provider": provider, **({"apiKeys": refs} if refs else {}), **spec}
    return {
        "apiVersion": "cliproxy.io/v1alpha1",
        "kind": "ProviderCredential",
        "metadata": {"name": name},
        "spec": body,
    }


def route(name: str, *creds: str | tuple[str, int], **spec: Any) -> dict[str, Any]:
    refs = [{"name": c} if isinstance(c, str) else {"name": c[0], "priority": c[1]} for c in creds]
    return {"apiVersion": "cliproxy.io/v1alpha1", "kind": "ProviderRoute", "metadata": {"name": name},
            "spec": {"credentials": refs, **spec}}  # fmt: skip


CREDENTIALS = [
    credential("openrouter", "openrouter", "openrouter-a", "openrouter-b", baseURL="https://openrouter.ai/api/v1"),
    credential("claude", "claude-api-key", "claude", prefix="claude-prod"),
    credential("local-vllm", "openai-compatibility", "vllm", baseURL="http://vllm:8000/v1", providerName="vllm"),
    credential("kiro", "kiro", tokenSecretRef={"name": "llm-keys", "key": "kiro"}),
]
ROUTES = [
    route("team-a", ("openrouter", 1), "claude", prefix="team-a", forceModelPrefix=True,
          models=[{"name": "anthropic/claude-3.5-sonnet", "alias": "sonnet"}, {"name": "openai/gpt-4o"}],
          excludedModels=["*-preview"], policy={"requestRetry": 2, "readTimeoutSeconds": 120}),
    route("local", "local-vllm", models=[{"name": "qwen3-32b", "alias": "team-default"}]),
    route("ide", "kiro", models=[{"name": "claude-sonnet-4"}]),
]  # fmt: skip


def load(gateway: Any, tmp_path: Path) -> Any:
    """Mount the rendered objects as the proxy would see them, and build its runtime from them."""
    config_dir, secrets_dir = tmp_path / "config", tmp_path / "secrets"
    config_dir.mkdir()
    secrets_dir.mkdir()
    (config_dir / CONFIG_KEY).write_text(gateway.config_text)
    for name, value in gateway.secret_data.items():
        (secrets_dir / name).write_text(value)
    source = ConfigSource(config_dir, secrets_dir)
    config, _ = source.read_config()
    return build_runtime(config, source)


def test_catalog_examples_render_into_a_config_the_proxy_loads(tmp_path: Path) -> None:
    result = render(ROUTES, CREDENTIALS, SECRETS)
    gateway = result.gateways["default"]
    assert gateway.routes == ("ide", "local", "team-a")
    runtime = load(gateway, tmp_path)
    assert set(runtime.routes) == {"team-a/sonnet", "team-a/openai/gpt-4o", "team-default", "claude-sonnet-4"}
    team = runtime.routes["team-a/sonnet"]
    assert [[t.credential.provider for t in g] for g in team.groups] == [
        ["openrouter", "openrouter"],
        ["claude-api-key"],
    ]
    assert {t.credential.headers["Authorization"] for t in team.groups[0]} == {"Bearer sk-or-AAA", "Bearer sk-or-BBB"}
    assert runtime.routes["team-a/sonnet"].groups[1][0].credential.headers["x-api-key"] == "sk-ant-CCC"
    assert runtime.routes["team-default"].targets[0].credential.provider == "vllm"
    assert runtime.config.request_retry == 2 and runtime.config.timeouts.read == 120
    assert runtime.config.allow_unauthenticated
    assert result.routes["team-a"].models == ["team-a/openai/gpt-4o", "team-a/sonnet"]


def test_secrets_stay_out_of_the_config_and_every_message() -> None:
    result = render([*ROUTES, route("broken", "missing")],
                    [*CREDENTIALS, credential("bad", "groq", "nope")], SECRETS)  # fmt: skip
    gateway = result.gateways["default"]
    document = yaml.safe_load(gateway.config_text)
    everything = gateway.config_text + repr(result.routes) + repr(result.credentials)
    for value in SECRETS["llm-keys"].values():
        assert value not in everything
    assert document["openrouter"][0]["api-key-file"] == "openrouter.key-0"
    assert gateway.secret_data["openrouter.key-1"] == "sk-or-BBB"
    assert document["kiro"][0]["token-file"] == "kiro.token"


def test_broken_routes_are_reported_and_the_rest_still_render() -> None:
    routes = [*ROUTES, route("ghost", "missing"), route("keyless", "bad"),
              route("zz-dup", "local-vllm", models=[{"name": "other", "alias": "team-default"}])]  # fmt: skip
    result = render(routes, [*CREDENTIALS, credential("bad", "groq", "not-a-key")], SECRETS)
    assert [p.reason for p in result.routes["ghost"].problems] == ["CredentialNotFound"]
    assert [p.reason for p in result.routes["keyless"].problems] == ["CredentialNotReady"]
    assert "has no key 'not-a-key'" in result.routes["keyless"].problems[0].message
    assert [p.reason for p in result.credentials["bad"].problems] == ["SecretKeyNotFound"]
    assert [p.reason for p in result.routes["zz-dup"].problems] == ["DuplicateModel"]
    assert "team-default" in result.routes["zz-dup"].problems[0].message
    assert all(result.routes[r].rendered for r in ("team-a", "local", "ide"))
    assert result.gateways["default"].routes == ("ide", "local", "team-a")


def test_missing_secret_is_named() -> None:
    result = render([route("r", "c")], [credential("c", "groq", "k")], {})
    assert result.credentials["c"].problems[0].reason == "SecretNotFound"
    assert "llm-keys" in result.credentials["c"].problems[0].message
    assert result.gateways == {}


def test_output_is_deterministic_whatever_the_input_order() -> None:
    first = render(ROUTES, CREDENTIALS, SECRETS).gateways["default"]
    shuffled_routes, shuffled_creds = ROUTES[:], CREDENTIALS[:]
    random.Random(7).shuffle(shuffled_routes)
    random.Random(8).shuffle(shuffled_creds)
    second = render(shuffled_routes, shuffled_creds, SECRETS).gateways["default"]
    assert (first.config_text, first.digest, dict(first.secret_data)) == (
        second.config_text, second.digest, dict(second.secret_data))  # fmt: skip


def test_key_rotation_changes_only_the_secret_and_the_digest() -> None:
    before = render(ROUTES, CREDENTIALS, SECRETS).gateways["default"]
    rotated = {"llm-keys": {**SECRETS["llm-keys"], "claude": "sk-ant-NEW"}}
    after = render(ROUTES, CREDENTIALS, rotated).gateways["default"]
    assert after.config_text == before.config_text
    assert after.secret_data["claude.key-0"] == "sk-ant-NEW" and after.digest != before.digest


def test_gateways_render_apart_with_only_their_own_secrets() -> None:
    routes = [route("a", "openrouter", gateway="alpha", models=[{"name": "x"}]),
              route("b", "claude", gateway="beta", models=[{"name": "x"}])]  # fmt: skip
    result = render(routes, CREDENTIALS, SECRETS, client_keys={"beta": ["client-1", "client-2"]})
    assert set(result.gateways) == {"alpha", "beta"}
    assert set(result.gateways["alpha"].secret_data) == {"openrouter.key-0", "openrouter.key-1"}
    beta = result.gateways["beta"]
    assert beta.secret_data["client-keys"] == "client-1\nclient-2\n"
    assert yaml.safe_load(beta.config_text)["api-keys-file"] == "client-keys"


def test_policy_conflicts_warn_and_the_first_route_wins() -> None:
    conflicting = {"requestRetry": 5, "maxRetryInterval": 10}
    routes = [route("a", "openrouter", models=[{"name": "x"}], policy={"requestRetry": 1}),
              route("b", "claude", models=[{"name": "y"}], policy=conflicting)]  # fmt: skip
    result = render(routes, CREDENTIALS, SECRETS)
    document = yaml.safe_load(result.gateways["default"].config_text)
    assert (document["request-retry"], document["max-retry-interval"]) == (1, 10)
    assert [w.reason for w in result.routes["b"].warnings] == ["PolicyConflict"]
    assert result.routes["b"].rendered


def test_every_credential_field_reaches_the_config(tmp_path: Path) -> None:
    creds = [
        credential("vertex", "vertex-api-key", "vllm", vertex={"project": "my-project-1", "location": "europe-west4"},
                   headers={"X-Team": "a"}, proxyURL="http://egress:3128", rateLimit={"rpm": 60, "tpm": 1000}),
        credential("compat", "openai-compatibility", "vllm", "claude", baseURL="http://vllm:8000/v1",
                   modelsEndpoint="/v1/models"),
    ]  # fmt: skip
    routes = [route("r", ("vertex", 3), "compat", models=[{"name": "gemini-2.5-pro"}], excludedModels=["*-exp"])]
    gateway = render(routes, creds, SECRETS).gateways["default"]
    document = yaml.safe_load(gateway.config_text)
    vertex = document["vertex-api-key"][0]
    assert vertex == {
        "name": "r/vertex", "proxy-url": "http://egress:3128", "headers": {"X-Team": "a"}, "priority": 3,
        "excluded-models": ["*-exp"], "models": [{"name": "gemini-2.5-pro"}], "rate-limit": {"rpm": 60, "tpm": 1000},
        "project": "my-project-1", "location": "europe-west4", "api-key-file": "vertex.key-0",
    }  # fmt: skip
    compat = document["openai-compatibility"][0]
    assert compat["name"] == "compat" and compat["models-endpoint"] == "/v1/models"
    assert compat["api-key-entries"] == [{"api-key-file": "compat.key-0"}, {"api-key-file": "compat.key-1"}]
    runtime = load(render(routes, creds, SECRETS).gateways["default"], tmp_path)
    assert (
        runtime.routes["gemini-2.5-pro"].groups[0][0].credential.vertex_scope
        == "projects/my-project-1/locations/europe-west4"
    )


def test_one_credential_shared_by_routes_renders_once_per_route_with_one_secret_file() -> None:
    routes = [route("a", "openrouter", prefix="a", forceModelPrefix=True, models=[{"name": "x"}]),
              route("b", "openrouter", prefix="b", forceModelPrefix=True, models=[{"name": "x"}])]  # fmt: skip
    gateway = render(routes, CREDENTIALS, SECRETS).gateways["default"]
    document = yaml.safe_load(gateway.config_text)
    assert [e["prefix"] for e in document["openrouter"]] == ["a", "a", "b", "b"]  # one entry per key and route
    assert sorted(gateway.secret_data) == ["openrouter.key-0", "openrouter.key-1"]


def test_a_route_without_prefix_force_or_models_still_renders_for_discovery() -> None:
    result = render([route("open", "local-vllm")], CREDENTIALS, SECRETS)
    document = yaml.safe_load(result.gateways["default"].config_text)
    assert "models" not in document["openai-compatibility"][0]  # the proxy asks the upstream's /models
    assert result.routes["open"].rendered and result.routes["open"].models == []


def test_routes_without_credentials_or_with_unknown_providers_are_invalid() -> None:
    result = render([route("none"), route("odd", "weird")], [credential("weird", "not-a-provider", "claude")], SECRETS)
    assert [p.reason for p in result.routes["none"].problems] == ["InvalidSpec"]
    assert [p.reason for p in result.credentials["weird"].problems] == ["InvalidSpec"]
    assert [p.reason for p in result.routes["odd"].problems] == ["CredentialNotReady"]
    assert result.gateways == {}


def many_routes(count: int) -> list[dict[str, Any]]:
    return [
        route(f"r{i:05d}", "openrouter", prefix=f"team-{i:05d}", models=[{"name": f"vendor/model-{i:05d}-{n}"}
                                                                       for n in range(8)])
        for i in range(count)
    ]  # fmt: skip


def test_a_large_gateway_is_gzipped_into_binary_data_and_loads(tmp_path: Path) -> None:
    import base64
    import gzip

    from cliproxy_operator.render import INLINE_LIMIT, PACKED_KEY

    gateway = render(many_routes(1500), CREDENTIALS, SECRETS).gateways["default"]
    assert len(gateway.config_text.encode()) > INLINE_LIMIT
    packed = gateway.config_payload["binaryData"][PACKED_KEY]
    assert "data" not in gateway.config_payload and len(packed) < 1024 * 1024
    assert gzip.decompress(base64.b64decode(packed)).decode() == gateway.config_text
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / PACKED_KEY).write_bytes(base64.b64decode(packed))
    config, _ = ConfigSource(config_dir).read_config()
    assert len(config.openrouter) == 1500 * 2  # one entry per route and key


def test_a_small_gateway_stays_plain_and_readable() -> None:
    gateway = render(ROUTES, CREDENTIALS, SECRETS).gateways["default"]
    assert gateway.config_payload == {"data": {CONFIG_KEY: gateway.config_text}}


def test_a_gateway_too_large_even_gzipped_is_held_with_a_reason(monkeypatch: Any) -> None:
    import cliproxy_operator.render as module

    monkeypatch.setattr(module, "PACKED_LIMIT", 1024)
    monkeypatch.setattr(module, "INLINE_LIMIT", 1024)
    rendering = render(many_routes(50), CREDENTIALS, SECRETS)
    assert "default" not in rendering.gateways and rendering.held == {"default"}
    state = rendering.routes["r00000"]
    assert not state.rendered and state.problems[0].reason == "ConfigTooLarge"
    assert "split its routes across gateways" in state.problems[0].message


def test_client_keys_render_into_the_secret_only() -> None:
    gateway = render(ROUTES, CREDENTIALS, SECRETS, {"default": ["ck-1", "ck-2"]}).gateways["default"]
    assert gateway.secret_data["client-keys"] == "ck-1\nck-2\n"
    assert "ck-1" not in gateway.config_text and '"api-keys-file": "client-keys"' in gateway.config_text
