"""A cliproxyapi++ config always loads: what cliproxy does not implement is accepted with one warning per key."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import aiohttp
import openai
import pytest
import yaml

from cliproxy_proxy.config import parse_config, parse_config_text
from cliproxy_proxy.demo_upstream import Fault
from cliproxy_proxy.runtime import build_runtime
from tests.support.runtime_user import as_runtime_user, check_runtime_user, runtime_user_env

from ..support.proxy import FakeProvider, base_config, compat_block

#: cliproxyapi++'s example config, with every key cliproxy leaves to cliproxyapi++ (cliproxyapi-inventory.md §3-4).
CLIPROXYAPI_EXAMPLE = """
host: ''
port: 8317
tls: {enable: false, cert: '', key: ''}
remote-management: {allow-remote: false, secret-key: '', disable-control-panel: false}
auth-dir: '~/.cli-proxy-api'
api-keys: ['your-api-key-1']
debug: true
pprof: {enable: false, addr: '127.0.0.1:8316'}
commercial-mode: false
usage-statistics-enabled: false
redis-usage-queue-retention-seconds: 60
proxy-url: ""
force-model-prefix: false
passthrough-headers: false
request-retry: 3
max-retry-credentials: 0
max-retry-interval: 30
transient-error-cooldown-seconds: 0
quota-exceeded: {switch-project: true, switch-preview-model: true}
routing: {strategy: 'round-robin', session-affinity: true, session-affinity-ttl: 1h}
ws-auth: false
nonstream-keepalive-interval: 0
streaming: {keepalive-seconds: 15, bootstrap-retries: 1}
disable-image-generation: false
claude-header-defaults: {user-agent: x}
codex-header-defaults: {user-agent: x}
oauth-model-alias: {claude: [{name: claude-sonnet-4-6, alias: sonnet, fork: true}]}
oauth-excluded-models: {claude: ['*haiku*']}
payload:
  default: [{models: [{name: 'gemini-*', protocol: gemini}], params: {'generationConfig.temperature': 0}}]
claude-api-key:
  - api-key: sk-ant-1
    cloak: {mode: auto, strict-mode: false, sensitive-words: [x]}
    models: [{name: claude-sonnet-4-6, alias: sonnet, force-mapping: true}]
codex-api-key:
  - api-key: sk-codex
    websockets: true
    models: [{name: gpt-5-codex, alias: codex, image: true}]
gemini-api-key:
  - api-key: AIzaSy01
    prefix: test
    proxy-url: socks5://proxy.example.com:1080
    models: [{name: gemini-2.5-flash, alias: gemini-flash}]
openai-compatibility:
  - name: openrouter
    prefix: or
    base-url: https://openrouter.ai/api/v1
    api-key-entries:
      - {api-key: sk-or-1, proxy-url: socks5://proxy.example.com:1080}
      - {api-key: sk-or-2}
    models:
      - {name: moonshotai/kimi-k2:free, alias: kimi-k2, thinking: {levels: [low, medium, high]}}
      - {name: qwen3.5-plus, alias: pooled, force-mapping: true}
mistral:
  - api-key: mk
    rate-limit: {rpm: 60, tpm: 100000, rpd: 1000, tpd: 1000000, wait-on-limit: true, max-wait-seconds: 30}
kiro:
  - access-token: aoa
    refresh-token: aor
    start-url: https://view.awsapps.com/start
amp-code:
  upstream-url: https://ampcode.com
  upstream-api-key: amp-key
  restrict-management-to-localhost: true
  model-mappings: [{from: claude-opus-4-6, to: sonnet}]
"""


def test_the_cliproxyapi_example_loads_with_one_warning_per_key(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "cliproxy.config"):
        config = parse_config_text(CLIPROXYAPI_EXAMPLE)
    notes = list(config.ignored)
    assert [r.getMessage() for r in caplog.records] == [f"config: {note}" for note in notes]
    named = {note.split(":", 1)[0] for note in notes}
    assert {"tls", "payload", "oauth-model-alias", "oauth-excluded-models", "routing.session-affinity",
            "streaming.bootstrap-retries", "claude-api-key[].cloak", "claude-api-key[].models[].force-mapping",
            "codex-api-key[].websockets", "codex-api-key[].models[].image", "mistral[].rate-limit.rpd",
            "mistral[].rate-limit.wait-on-limit", "openai-compatibility[].models[].thinking", "kiro[].start-url",
            "ampcode[].model-mappings"} <= named  # fmt: skip
    assert len(named) == len(notes)  # one note per key, however many entries repeat it
    assert config.routing.strategy == "round-robin" and config.mistral[0].rate_limit.rpm == 60  # type: ignore[union-attr]
    assert config.ampcode[0].upstream_url == "https://ampcode.com"
    # SOCKS egress is not supported: those entries are left out, never sent direct.
    assert config.gemini_api_key == ()
    assert [e.api_key.get_secret_value() for e in config.openai_compatibility[0].api_key_entries] == ["sk-or-2"]  # type: ignore[union-attr]
    assert any(note.startswith("gemini-api-key[0]: not served") for note in notes)


def test_a_typo_of_a_key_of_neither_project_is_still_refused() -> None:
    from cliproxy_proxy.config import ConfigError

    with pytest.raises(ConfigError, match=r"routing.stratgy: Extra inputs"):
        parse_config({"routing": {"stratgy": "fill-first"}})


def test_openrouter_registered_through_the_generic_block() -> None:
    """Provider pattern 3 of the catalog: the name labels the provider, the prefix scopes its models."""
    config = parse_config({"openai-compatibility": [{
        "name": "openrouter", "prefix": "or", "base-url": "https://openrouter.ai/api/v1",
        "api-key-entries": [{"api-key": "sk-or"}], "models": [{"name": "moonshotai/kimi-k2", "alias": "kimi"}],
    }], "force-model-prefix": True})  # fmt: skip
    runtime = build_runtime(config, None)
    assert set(runtime.routes) == {"or/kimi"}
    assert runtime.routes["or/kimi"].groups[0][0].credential.provider == "openrouter"


async def test_timeouts_total_bounds_a_whole_non_streaming_attempt(provider: FakeProvider, start_proxy) -> None:
    timeouts = {"read": 30, "total": 0.2}
    config = base_config(**{"openai-compatibility": [compat_block(provider.url)], "timeouts": timeouts,
                            "request-retry": 0, "disable-cooling": True})  # fmt: skip
    client = (await start_proxy(config)).client()
    provider.state.fail_next("*", Fault(delay=1.0))  # within `read`, beyond `total`
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "slow"}])
    assert caught.value.status_code == 504
    reply = await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "fast"}])
    assert reply.choices[0].message.content == "echo: fast"


async def test_the_openrouter_name_labels_metrics(provider: FakeProvider, start_proxy) -> None:
    block = compat_block(provider.url, name="openrouter", prefix="or")
    running = await start_proxy(base_config(**{"openai-compatibility": [block]}))
    await running.client().chat.completions.create(model="or/small", messages=[{"role": "user", "content": "hi"}])
    async with aiohttp.ClientSession() as session, session.get(running.url + "/metrics") as response:
        text = await response.text()
    assert 'cliproxy_requests_total{model="or/small",provider="openrouter",status="200"} 1.0' in text


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(as_runtime_user(["cliproxy-proxy", "--check", str(config)]), capture_output=True,
                          text=True, cwd="/", env=runtime_user_env(), timeout=30)  # fmt: skip


def test_check_validates_lists_what_is_ignored_and_fails_on_errors(tmp_path: Path) -> None:
    """As the image runs it: uid 10001, no passwd entry."""
    check_runtime_user()
    tmp_path.chmod(0o755)
    good = tmp_path / "good.yaml"
    good.write_text(CLIPROXYAPI_EXAMPLE)
    good.chmod(0o644)
    result = _check(good)
    assert result.returncode == 0, result.stderr
    assert "valid:" in result.stdout and "tls: ignored" in result.stdout and "claude-api-key[].cloak" in result.stdout
    assert "sk-ant-1" not in result.stdout + result.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"groq": [{"api-key": "sk-secret-value", "base-url": "nope"}]}))
    bad.chmod(0o644)
    result = _check(bad)
    assert result.returncode == 2
    assert "groq[0].base-url: must be an absolute http/https URL" in result.stderr
    assert "sk-secret-value" not in result.stderr + result.stdout and "Traceback" not in result.stderr
