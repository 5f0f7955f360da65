"""The config contract: every catalog block parses, errors name their path and never echo secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from cliproxy_proxy.catalog import KINDS
from cliproxy_proxy.config import ConfigError, ProxyConfig, parse_config, parse_config_text
from cliproxy_proxy.loader import ConfigSource
from cliproxy_proxy.runtime import build_credentials, build_runtime

CATALOG_EXAMPLE = """
claude-api-key:
  - api-key: "sk-ant-xyz"
    prefix: "claude-prod"
openrouter:
  - api-key: "sk-or-v1-xyz"
    base-url: "https://openrouter.ai/api/v1"
    prefix: "or"
openai-compatibility:
  - name: "openrouter-compat"
    prefix: "orc"
    base-url: "https://openrouter.ai/api/v1"
    api-key-entries:
      - api-key: "sk-or-v1-abc"
kiro:
  - token-file: "~/.aws/sso/cache/kiro-auth-token.json"
"""


def test_catalog_examples_parse() -> None:
    config = parse_config_text(CATALOG_EXAMPLE)
    assert config.claude_api_key[0].prefix == "claude-prod"
    assert config.openrouter[0].base_url == "https://openrouter.ai/api/v1"
    assert config.openai_compatibility[0].api_key_entries[0].api_key is not None
    assert config.kiro[0].token_file == "~/.aws/sso/cache/kiro-auth-token.json"


def test_every_catalog_block_is_accepted() -> None:
    entry_for = {
        "openai-compatibility": {"name": "compat", "base-url": "http://x", "api-key-entries": [{"api-key": "k"}]},
        "kiro": {"token-file": "kiro.json"},
        "cursor": {"token-file": "cursor.txt"},
        "ampcode": {"token-file": "amp.json"},
        "bedrock": {"region": "us-east-1"},
    }
    document = {block: [entry_for.get(block, {"api-key": "k"})] for block in KINDS}
    config = parse_config(document)
    assert {block for block, entries in config.blocks() if len(entries) == 1} == set(KINDS)


def test_defaults_follow_cliproxyapi() -> None:
    config = ProxyConfig()
    assert config.port == 8317
    assert config.request_retry == 3
    assert config.max_retry_interval == 30
    assert config.max_retry_credentials == 0
    assert config.routing.strategy == "round-robin"
    assert (config.cooldowns.auth, config.cooldowns.not_found) == (1800, 43200)
    assert (config.cooldowns.quota_base, config.cooldowns.quota_max) == (1, 1800)


def test_transient_faults_default_to_envoy_style_outlier_detection() -> None:
    cooldowns = parse_config({"cooldowns": {"transient": 1}}).cooldowns  # the workaround still loads
    assert (cooldowns.transient, cooldowns.transient_max) == (1, 300)
    assert (cooldowns.consecutive_failures, cooldowns.max_ejection_percent) == (3, 50)
    assert ProxyConfig().cooldowns.transient == 30


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"openrouter": [{"api-key": "k", "base-url": "ftp://nope"}]}, "openrouter[0].base-url: must be an absolute"),
        ({"groq": [{"api-key": "k", "bogus": 1}]}, "groq[0].bogus: Extra inputs are not permitted"),
        ({"port": "eighty"}, "port: Input should be a valid integer"),
        ({"port": 0}, "port: Input should be greater than or equal to 1"),
        ({"routing": {"strategy": "random"}}, "routing.strategy: Input should be 'round-robin' or 'fill-first'"),
        ({"claude-api-key": [{"prefix": "p"}]}, "claude-api-key[0]: exactly one of api-key or api-key-file"),
        ({"claude-api-key": [{"api-key": "a", "api-key-file": "b"}]}, "exactly one of api-key or api-key-file"),
        ({"deepseek": [{"api-key": "k", "prefix": "bad/prefix"}]}, "deepseek[0].prefix: String should match"),
        (
            {"openai-compatibility": [{"name": "x", "base-url": "http://x", "api-key-entries": []}]},
            "openai-compatibility[0].api-key-entries: List should have at least 1 item",
        ),
        ({"groq": [{"api-key": "k", "clok": {"mode": "auto"}}]}, "groq[0].clok: Extra inputs are not permitted"),
        (
            {"mistral": [{"api-key": "k", "rate-limit": {"rpm": 0}}]},
            "mistral[0].rate-limit.rpm: Input should be greater",
        ),
        ({"kiro": [{"region": "us-east-1"}]}, "kiro[0]: exactly one of token-file or access-token"),
        ({"vertex-api-key": [{"api-key": "k", "project": "Bad Project"}]}, "vertex-api-key[0].project: String should"),
        ({"together": {"api-key": "k"}}, "together: Input should be a valid list"),
    ],
)
def test_errors_name_the_path(document: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    assert expected in str(caught.value)


def test_errors_never_echo_secret_values() -> None:
    secret = "sk-very-secret-value"
    with pytest.raises(ConfigError) as caught:
        parse_config({"openrouter": [{"api-key": secret, "base-url": 12, "headers": {"X-Key": 5}}],
                      "api-keys": [secret, 7]})  # fmt: skip
    assert secret not in str(caught.value)
    assert "openrouter[0].base-url" in str(caught.value)
    assert "api-keys[1]" in str(caught.value)


def test_secrets_are_masked_in_repr() -> None:
    config = parse_config({"groq": [{"api-key": "sk-hidden"}], "api-keys": ["client-hidden"]})
    assert "sk-hidden" not in repr(config)
    assert "client-hidden" not in repr(config)
    credentials, _ = build_credentials(config, None)
    assert "sk-hidden" not in repr(credentials)


def test_yaml_syntax_error_has_position() -> None:
    with pytest.raises(ConfigError, match="not valid YAML at line 3"):
        parse_config_text("port: 1\ngroq: [\n")


def test_cliproxyapi_operational_keys_are_tolerated() -> None:
    config = parse_config({"auth-dir": "~/.cli-proxy-api", "debug": True, "remote-management": {"allow-remote": False},
                           "ampcode": {"token-file": "amp.json"}})  # fmt: skip
    assert config.ampcode[0].token_file == "amp.json"


def test_api_key_files_resolve_against_the_secrets_dir(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "groq-key").write_text("sk-from-file\n")
    (secrets / "client-keys").write_text("first\n\nsecond\n")
    config_file = tmp_path / "config.yaml"
    config_file.write_text("api-keys-file: client-keys\ngroq:\n  - api-key-file: groq-key\n    models: [{name: m}]\n")
    source = ConfigSource(config_file, secrets)
    config, _ = source.read_config()
    runtime = build_runtime(config, source)
    assert runtime.credentials[0].headers["Authorization"] == "Bearer sk-from-file"
    assert runtime.client_keys == (b"first", b"second")
    assert secrets / "groq-key" in runtime.secret_files


def test_missing_secret_file_names_the_path_not_the_content(tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text("groq:\n  - api-key-file: absent-key\n")
    source = ConfigSource(config_file)
    config, _ = source.read_config()
    with pytest.raises(ConfigError, match=r"groq\[0\]: cannot read secret file .*absent-key"):
        build_credentials(config, source)


def test_config_directory_like_a_configmap_volume(tmp_path: Path) -> None:
    data = tmp_path / "..2026_11_27_00_00_00.1"
    data.mkdir()
    (data / "config.yaml").write_text("port: 9000\n")
    (tmp_path / "..data").symlink_to(data.name)
    (tmp_path / "config.yaml").symlink_to("..data/config.yaml")
    config, _ = ConfigSource(tmp_path).read_config()
    assert config.port == 9000


def test_directory_without_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no config\.yaml"):
        ConfigSource(tmp_path).read_config()
