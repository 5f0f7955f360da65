"""Header injection and empty configs: no control character reaches an upstream, no empty config goes live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from cliproxy_proxy.app import RELOADER
from cliproxy_proxy.config import ConfigError, parse_config, parse_config_text
from cliproxy_proxy.upstream import Endpoint, UnsafeRequest

from ..support.proxy import CLIENT_KEY, FakeProvider, base_config, compat_block, eventually

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
SMUGGLED = "x\r\nPOST /v1/admin HTTP/1.1\r\nX-Smuggled: 1"


def _compat(**extra: Any) -> dict[str, Any]:
    return {"openai-compatibility": [compat_block("http://upstream.test/v1", **extra)]}


UNSAFE_DOCUMENTS = {
    "openai-compatibility[0].headers.X-Team": _compat(headers={"X-Team": SMUGGLED}),
    "openai-compatibility[0].headers.X\\r\\nEvil": _compat(headers={"X\r\nEvil": "1"}),
    "openai-compatibility[0].models[0].name": _compat(models=[(SMUGGLED, None)]),
    "openai-compatibility[0].models[0].alias": _compat(models=[("up", "a\nb")]),
    "openai-compatibility[0].base-url": {"openai-compatibility": [compat_block("http://h/v1\r\nX: 1")]},
    "openai-compatibility[0].api-key-entries[0].api-key": _compat(keys=("sk-1\r\nX-Smuggled: 1",)),
    "openai-compatibility[0].excluded-models[0]": _compat(**{"excluded-models": ["a\x00"]}),
    "claude-api-key[0].prefix": {"claude-api-key": [{"api-key": "k", "prefix": "p\x7f"}]},
    "kiro[0].region": {"kiro": [{"access-token": "a", "refresh-token": "r", "region": "us-east-1\r\n"}]},
    "api-keys[0]": {"api-keys": ["client\n"]},
}


@pytest.mark.parametrize("where", UNSAFE_DOCUMENTS)
def test_control_characters_anywhere_in_the_config_are_refused(where: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(UNSAFE_DOCUMENTS[where])
    assert str(refused.value) == f"{where}: must not contain control characters (CR, LF, NUL...)"


def test_header_names_are_tokens_and_values_latin_1() -> None:
    config = parse_config(_compat(headers={"X-Note": "caf\u00e9 ok"}))
    assert config.openai_compatibility[0].headers["X-Note"] == "caf\u00e9 ok"
    with pytest.raises(ConfigError, match=r"header name 'X Note' is not an HTTP token"):
        parse_config(_compat(headers={"X Note": "1"}))
    with pytest.raises(ConfigError, match="header X-Note: the value must be Latin-1 text"):
        parse_config(_compat(headers={"X-Note": "\u2028"}))


@pytest.mark.parametrize("text", ["", "   \n", "# nothing but a comment\n", "{}", "null"])
def test_an_empty_config_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="the config is empty"):
        parse_config_text(text)


def test_the_http_client_refuses_a_head_with_control_characters() -> None:
    endpoint = Endpoint.parse("http://upstream.test/v1")
    assert endpoint.head("POST", "/chat", {"X-Team": "blue"}).startswith(b"POST /v1/chat HTTP/1.1\r\n")
    for path, headers in (("/chat", {"X-Team": SMUGGLED}), ("/m/x\r\n:generate", {}), ("/chat", {"X\nY": "1"}),
                          ("/chat", {"Authorization": "Bearer tok\x00en"})):  # fmt: skip
        with pytest.raises(UnsafeRequest):
            endpoint.head("POST", path, headers)


def test_a_secret_file_with_a_line_break_inside_is_refused(tmp_path: Path) -> None:
    from cliproxy_proxy.loader import ConfigSource
    from cliproxy_proxy.runtime import build_credentials

    (tmp_path / "key").write_text("sk-upstream\r\nX-Smuggled: 1\n")
    (tmp_path / "clients").write_text("client-a\nclient-b\n")  # one client key a line: line breaks belong there
    path = tmp_path / "config.yaml"
    path.write_text('{"api-keys-file": "clients", "openai-compatibility": [{"name": "f", "base-url": "http://u",'
                    ' "api-key-entries": [{"api-key-file": "key"}]}]}')  # fmt: skip
    source = ConfigSource(path)
    with pytest.raises(ConfigError, match=r"api-key-entries\[0\]: the secret file holds control characters") as refused:
        build_credentials(source.read_config()[0], source, None)
    assert "sk-upstream" not in str(refused.value)


async def test_a_client_model_name_with_control_characters_is_a_400(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    chat = {"model": "small\r\nX-Smuggled: 1", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        for path in ("/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/completions",
                     "/v1/messages/count_tokens"):  # fmt: skip
            async with session.post(running.url + path, json=chat, headers=AUTH) as response:
                assert response.status == 400, path
                assert "control characters" in await response.text()
        gemini = running.url + "/v1beta/models/small%0D%0AX-Smuggled:%201:generateContent"
        async with session.post(gemini, json={"contents": []}, headers=AUTH) as response:
            assert response.status == 400
            assert (await response.json())["error"]["status"] == "INVALID_ARGUMENT"
    assert provider.received == []


async def test_an_emptied_or_injected_config_file_keeps_the_last_good_one(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    reloader = running.app[RELOADER]
    for text, error in (("", "the config is empty"), (orjson.dumps(_compat(headers={"X": SMUGGLED})).decode(),
                                                      "must not contain control characters")):  # fmt: skip
        running.config_path.write_text(text)
        await eventually(lambda error=error: error in reloader.last_error)  # type: ignore[misc]
        assert running.proxy.generation == 1
        async with aiohttp.ClientSession() as session:
            async with session.get(running.url + "/v1/models") as response:
                assert response.status == 401  # the client keys did not vanish
            async with session.get(running.url + "/v1/models", headers=AUTH) as response:
                assert [m["id"] for m in (await response.json())["data"]] == ["small"]
