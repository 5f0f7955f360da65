"""The render function: CRs in, the proxy's own config out, loadable by the proxy, deterministic, secrets apart."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from cliproxy_operator.render import CONFIG_KEY, SecretConsent, render
from cliproxy_proxy.loader import ConfigSource

from ..fakes.google_identity import GoogleIdentity
from .objects import load

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
    assert (team.policy.request_retry, team.policy.read) == (2, 120)
    assert (runtime.config.request_retry, runtime.routes["team-default"].policy.request_retry) == (3, 3)
    assert not runtime.config.allow_unauthenticated and not runtime.client_keys  # no client keys: closed
    assert [w.reason for w in result.routes["local"].notices] == ["NoClientKeys"] and not result.routes[
        "local"
    ].warnings
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


def test_a_routes_policy_governs_only_its_own_models(tmp_path: Path) -> None:
    routes = [
        route("a", "openrouter", models=[{"name": "x"}], policy={"requestRetry": 1}),
        route("b", "claude", models=[{"name": "y"}], policy={"requestRetry": 5, "connectTimeoutSeconds": 2}),
    ]
    result = render(routes, CREDENTIALS, SECRETS)
    document = yaml.safe_load(result.gateways["default"].config_text)
    assert "request-retry" not in document and "timeouts" not in document  # nothing gateway-wide
    runtime = load(result.gateways["default"], tmp_path)
    x, y = runtime.routes["x"].policy, runtime.routes["y"].policy
    assert (x.request_retry, x.connect) == (1, runtime.config.timeouts.connect)
    assert (y.request_retry, y.connect) == (5, 2)
    assert not result.routes["b"].warnings and result.routes["b"].rendered


def stamped(resource: dict[str, Any], when: str) -> dict[str, Any]:
    return {**resource, "metadata": {**resource["metadata"], "creationTimestamp": when}}


def test_a_contested_model_costs_only_that_model_on_the_newer_route(tmp_path: Path) -> None:
    victim = stamped(route("zz-victim", "openrouter", models=[{"name": "x"}, {"name": "w"}]), "2026-01-01T00:00:00Z")
    grabber = stamped(route("aa-grabber", "claude", models=[{"name": "x"}, {"name": "y"}]), "2026-02-01T00:00:00Z")
    result = render([grabber, victim], CREDENTIALS, SECRETS)
    assert result.routes["zz-victim"].models == ["w", "x"]
    assert not result.routes["zz-victim"].warnings
    assert result.routes["aa-grabber"].models == ["claude-prod/y", "y"] and result.routes["aa-grabber"].rendered
    conflict = next(w for w in result.routes["aa-grabber"].warnings if w.reason == "DuplicateModel")
    assert "'x'" in conflict.message and "zz-victim" in conflict.message
    runtime = load(result.gateways["default"], tmp_path)
    assert {t.credential.provider for t in runtime.routes["x"].targets} == {"openrouter"}
    assert {t.credential.provider for t in runtime.routes["y"].targets} == {"claude-api-key"}


def test_same_age_routes_break_the_tie_by_name() -> None:
    a = stamped(route("b-route", "openrouter", models=[{"name": "x"}]), "2026-01-01T00:00:00Z")
    b = stamped(route("a-route", "claude", models=[{"name": "x"}]), "2026-01-01T00:00:00Z")
    result = render([a, b], CREDENTIALS, SECRETS)
    assert result.routes["a-route"].rendered and not result.routes["b-route"].rendered
    assert [p.reason for p in result.routes["b-route"].problems] == ["DuplicateModel"]


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
    vertex = runtime.routes["gemini-2.5-pro"].groups[0][0].credential
    assert vertex.scoped("/v1/publishers/google/models/gemini-2.5-pro:generateContent", "gemini-2.5-pro") == (
        "/v1/projects/my-project-1/locations/europe-west4/publishers/google/models/gemini-2.5-pro:generateContent"
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


def test_a_secret_without_the_opt_in_label_is_never_copied() -> None:
    consent = SecretConsent(not_opted_in=frozenset({"victim"}))
    creds = [credential("mine", "groq", "claude"),
             {**credential("thief", "openai-compatibility", baseURL="https://evil.example/v1"),
              "spec": {"provider": "openai-compatibility", "baseURL": "https://evil.example/v1",
                       "apiKeys": [{"secretKeyRef": {"name": "victim", "key": "k"}}]}}]  # fmt: skip
    result = render([route("r", "mine", "thief", models=[{"name": "m"}])], creds, SECRETS, consent=consent)
    problem = result.credentials["thief"].problems[0]
    assert (
        problem.reason == "SecretNotOptedIn"
        and "'victim'" in problem.message
        and "cliproxy.io/credential" in (problem.message)
    )
    assert result.credentials["thief"].usable_keys == 0
    gateway = result.gateways["default"]
    assert "evil.example" not in gateway.config_text and not any(f.startswith("thief") for f in gateway.secret_data)


KIRO_OWN = "https://prod.eu-west-1.auth.desktop.kiro.dev"


def test_refresh_url_is_a_vendor_endpoint_or_allowed_by_the_token_secret() -> None:
    def kiro(url: str) -> dict[str, Any]:
        return credential("kiro", "kiro", tokenSecretRef={"name": "llm-keys", "key": "kiro"}, refreshURL=url)

    ide = [route("ide", "kiro", models=[{"name": "claude-sonnet-4"}])]
    for url, allowed in ((KIRO_OWN, None), ("https://oidc.us-east-1.amazonaws.com", None),
                         ("https://relay.corp.example", "https://relay.corp.example/")):  # fmt: skip
        consent = SecretConsent(refresh_urls={"llm-keys": allowed} if allowed else {})
        assert render(ide, [kiro(url)], SECRETS, consent=consent).credentials["kiro"].usable_keys == 1, url
    for url, allowed in (("https://evil.example", None), ("https://evil.example", "https://relay.corp.example"),
                         ("https://prod.x.auth.desktop.kiro.dev.evil.example", None),
                         ("https://prod.x.auth.desktop.kiro.dev@evil.example", None),
                         ("http://prod.us-east-1.auth.desktop.kiro.dev", None)):  # fmt: skip
        consent = SecretConsent(refresh_urls={"llm-keys": allowed} if allowed else {})
        result = render(ide, [kiro(url)], SECRETS, consent=consent)
        assert [p.reason for p in result.credentials["kiro"].problems] == ["RefreshURLNotAllowed"], url
        assert result.gateways == {} and SECRETS["llm-keys"]["kiro"] not in repr(result)


def test_a_keyless_gateway_opens_only_when_every_route_asks() -> None:
    one = route("one", "openrouter", models=[{"name": "x"}], allowUnauthenticated=True)
    two = route("two", "claude", models=[{"name": "y"}])
    closed = render([one, two], CREDENTIALS, SECRETS)
    assert '"allow-unauthenticated"' not in closed.gateways["default"].config_text
    assert [w.reason for w in closed.routes["one"].warnings] == ["GatewayClosed"]
    assert "closed wins" in closed.routes["one"].warnings[0].message
    both = render([one, {**two, "spec": {**two["spec"], "allowUnauthenticated": True}}], CREDENTIALS, SECRETS)
    assert yaml.safe_load(both.gateways["default"].config_text)["allow-unauthenticated"] is True
    keyed = render([one], CREDENTIALS, SECRETS, {"default": ["ck"]})
    assert "allow-unauthenticated" not in keyed.gateways["default"].config_text
    assert not keyed.routes["one"].warnings and not keyed.routes["one"].notices


def test_cloud_identities_render_without_keys_or_with_a_key_file(tmp_path: Path) -> None:
    """AKS and GKE Workload Identity need no Secret; a service-account key file becomes ``service-account-file``."""
    key_file = orjson.dumps({**GoogleIdentity(url="https://oauth2.googleapis.com/token").key_file()}).decode()
    secrets = {"llm-keys": {**SECRETS["llm-keys"], "sa": key_file}}
    creds = [
        credential("aks", "azure-openai", azure={"resource": "contoso", "apiVersion": "2025-01-01-preview",
                                                 "entra": {"clientID": "5f2e7a10-aaaa"}}),
        credential("gke", "vertex-api-key", vertex={"project": "my-project-1", "auth": "workloadIdentity"}),
        credential("sa", "vertex-api-key", "sa", vertex={"project": "my-project-1", "auth": "serviceAccountKey"}),
    ]  # fmt: skip
    routes = [route("azure", "aks", models=[{"name": "gpt4o-prod", "alias": "gpt-4o"}]),
              route("vertex", "gke", ("sa", 1), models=[{"name": "gemini-2.5-pro"}])]  # fmt: skip
    result = render(routes, creds, secrets)
    assert {name: state.usable_keys for name, state in result.credentials.items()} == {"aks": 1, "gke": 1, "sa": 1}
    gateway = result.gateways["default"]
    document = yaml.safe_load(gateway.config_text)
    assert document["azure-openai"] == [{
        "name": "azure/aks", "models": [{"name": "gpt4o-prod", "alias": "gpt-4o"}], "resource": "contoso",
        "api-version": "2025-01-01-preview", "entra": {"client-id": "5f2e7a10-aaaa"},
    }]  # fmt: skip
    vertex = {entry["name"]: entry for entry in document["vertex-api-key"]}
    assert vertex["vertex/gke"]["adc"] is True and "api-key-file" not in vertex["vertex/gke"]
    assert vertex["vertex/sa"]["service-account-file"] == "sa.key-0"
    assert set(gateway.secret_data) == {"sa.key-0"}
    runtime = load(gateway, tmp_path)  # no token is fetched before a request
    credentials = {c.label: c for c in runtime.credentials}
    assert {label: c.session is not None for label, c in credentials.items()} == {
        "azure/aks": True, "vertex/gke": True, "vertex/sa": True}  # fmt: skip
    assert credentials["azure/aks"].base_url == "https://contoso.openai.azure.com/openai"


def test_fallbacks_and_weights_render_into_the_proxys_routing(tmp_path: Path) -> None:
    team = route("team-a", "claude", prefix="team-a", forceModelPrefix=True, models=[{"name": "sonnet"}],
                 fallbacks={"team-a/sonnet": ["team-default", "team-a/sonnet", "team-default"],
                            "team-default": ["team-a/sonnet"]})  # fmt: skip
    team["spec"]["credentials"] = [{"name": "claude", "weight": 0}, {"name": "openrouter", "weight": 3}]
    local = route("local", "local-vllm", models=[{"name": "qwen3-32b", "alias": "team-default"}])
    result = render([team, local], CREDENTIALS, SECRETS)
    runtime = load(result.gateways["default"], tmp_path)
    assert {model: [r.model for r in chain] for model, chain in runtime.fallbacks.items()} == {
        "team-a/sonnet": ["team-default"]  # itself and the repeat left out
    }
    # Another route's model is not this route's to divert: its clients' prompts would follow the author's choice.
    assert [(p.reason, "team-default" in p.message) for p in result.routes["team-a"].warnings] == [
        ("InvalidFallback", True)
    ]
    weights = {t.credential.provider: t.credential.weight for t in runtime.routes["team-a/sonnet"].targets}
    assert weights == {"claude-api-key": 0, "openrouter": 3} and runtime.routes["team-a/sonnet"].weighted


def test_a_header_name_that_is_no_http_token_fails_its_credential_not_the_gateway(tmp_path: Path) -> None:
    """A name the proxy refuses is caught per credential: the rendered config would fail as a whole otherwise."""
    bad = [credential(name, "groq", "vllm", headers=headers)
           for name, headers in (("spaced", {"X Team": "a"}), ("split", {"X-Team\r\nHost": "a"}),
                                 ("wide", {"X-Team": "\u2603"}))]  # fmt: skip
    routes = [*ROUTES, route("r-spaced", "spaced"), route("r-split", "split"), route("r-wide", "wide")]
    result = render(routes, [*CREDENTIALS, *bad], SECRETS)
    for name in ("spaced", "split", "wide"):
        assert [p.reason for p in result.credentials[name].problems] == ["InvalidSpec"]
        assert [p.reason for p in result.routes[f"r-{name}"].problems] == ["CredentialNotReady"]
    assert "'X Team' is not an HTTP token" in result.credentials["spaced"].problems[0].message
    assert result.gateways["default"].routes == ("ide", "local", "team-a")
    load(result.gateways["default"], tmp_path)


def test_a_bedrock_credential_renders_its_region_and_signs_as_the_pods_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No keys in the Secret or the config: the gateway's own AWS identity (here the environment, as IRSA's)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPODIDENTITY00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "pod-identity-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    creds = [credential("aws", "bedrock", "claude", bedrock={"region": "eu-central-1"})]  # a key it ignores
    routes = [route("r", "aws", models=[{"name": "anthropic.claude-3-haiku-20240307-v1:0", "alias": "haiku"}])]
    result = render(routes, creds, SECRETS)
    assert result.credentials["aws"].usable_keys == 1 and not result.credentials["aws"].problems
    gateway = result.gateways["default"]
    assert yaml.safe_load(gateway.config_text)["bedrock"] == [
        {"name": "r/aws", "region": "eu-central-1",
         "models": [{"name": "anthropic.claude-3-haiku-20240307-v1:0", "alias": "haiku"}]},
    ]  # fmt: skip
    assert not gateway.secret_data
    target = load(gateway, tmp_path).routes["haiku"].targets[0]
    assert target.credential.base_url == "https://bedrock-runtime.eu-central-1.amazonaws.com"
    assert target.credential.codec.authenticates_each_request
