"""OAuth / session providers end to end: the proxy keeps Kiro tokens fresh under load, the SDKs see no failure.

The fake Kiro vendor issues tokens that live a few seconds and rotates refresh tokens (a reused one is refused,
as Kiro's is), so a second refresh of the same cycle, or a request on an expired token, would show as a failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp.test_utils import TestServer

from cliproxy_proxy.app import PROXY

from ..fakes.kiro import KiroVendor, start_kiro
from ..support.proxy import CLIENT_KEY, FakeProvider, base_config, eventually

Serve = Callable[..., Awaitable[TestServer]]
TTL = 3.0  # seconds each access token lives: several refresh cycles in one test
MESSAGES = [{"role": "user", "content": "ping"}]


def kiro_token_file(path: Path, vendor: KiroVendor, ttl: float = TTL) -> tuple[str, str]:
    """The file the Kiro IDE leaves in ~/.aws/sso/cache/, for tokens the fake vendor issued."""
    import datetime

    access, refresh = vendor.issue(ttl)
    expires = datetime.datetime.fromtimestamp(vendor.access[access], datetime.UTC)
    path.write_text(json.dumps({
        "accessToken": access, "refreshToken": refresh, "expiresAt": expires.isoformat().replace("+00:00", "Z"),
        "authMethod": "social", "provider": "Github", "profileArn": vendor.profile_arn, "region": "us-east-1",
    }, indent=2))  # fmt: skip
    return access, refresh


def kiro_block(path: Path, url: str, **extra: Any) -> dict[str, Any]:
    return {"token-file": str(path), "base-url": url, "refresh-url": url,
            "models": [{"name": "claude-sonnet-4.5", "alias": "sonnet"}], **extra}  # fmt: skip


async def test_kiro_tokens_refresh_under_load_without_a_failed_request(
    aiohttp_server: Serve, start_proxy: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    vendor, url = await start_kiro(aiohttp_server, token_ttl=TTL)
    token_file = tmp_path / "kiro-auth-token.json"
    first_access, first_refresh = kiro_token_file(token_file, vendor)
    running = await start_proxy(base_config(kiro=[kiro_block(token_file, url)]))
    oai = running.client()
    claude = anthropic.AsyncAnthropic(base_url=running.url, api_key=CLIENT_KEY, max_retries=0)
    failures: list[BaseException] = []
    done = 0

    async def worker(n: int) -> None:
        nonlocal done
        while len(vendor.refreshes) < 2:  # two refresh cycles: the second uses the first's token
            try:
                if n % 3 == 0:
                    completion = await oai.chat.completions.create(model="sonnet", messages=MESSAGES)
                    assert completion.choices[0].message.content
                elif n % 3 == 1:
                    stream = await oai.chat.completions.create(model="sonnet", messages=MESSAGES, stream=True)
                    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
                else:
                    message = await claude.messages.create(model="sonnet", max_tokens=64, messages=MESSAGES)
                    assert message.content[0].type == "text"
                done += 1
            except Exception as error:  # every failure counts, whatever its kind
                failures.append(error)
            await asyncio.sleep(0.02)

    await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(9))), 60)
    assert failures == []
    assert done > 20
    # One refresh per cycle: each used the refresh token the previous one issued (a reuse would be refused).
    used = [r["body"]["refreshToken"] for r in vendor.refreshes]
    assert used[0] == first_refresh and len(set(used)) == len(used)
    session = running.proxy.runtime.credentials[0].session
    assert session is not None and session.refresh_count == len(vendor.refreshes)
    # The file is written back in the Kiro IDE's own format, holding the newest tokens.
    written = json.loads(token_file.read_text())
    assert written["accessToken"] == session.access_token() != first_access
    assert set(written) >= {"accessToken", "refreshToken", "expiresAt", "authMethod", "provider", "profileArn"}
    assert written["expiresAt"].endswith("Z")
    assert sum("refreshed" in r.getMessage() for r in caplog.records) == len(vendor.refreshes)
    await assert_no_token_leaked(running.url, vendor, caplog)


async def assert_no_token_leaked(url: str, vendor: KiroVendor, caplog: pytest.LogCaptureFixture) -> None:
    tokens = [*vendor.access, *vendor.refresh, *(r["body"]["refreshToken"] for r in vendor.refreshes)]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics") as response:
            metrics = await response.text()
        async with http.get(
            f"{url}/v1/metrics/providers", headers={"Authorization": f"Bearer {CLIENT_KEY}"}
        ) as response:
            assert response.status == 200
            providers = await response.text()
    assert "cliproxy_oauth_refreshes_total" in metrics and "cliproxy_oauth_session_state" in metrics
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert logs, "the test must capture the proxy's logs to prove anything"
    for token in tokens:
        assert token not in metrics and token not in providers and token not in logs


async def test_a_revoked_refresh_token_is_reported_and_requests_fail_over(
    aiohttp_server: Serve, start_proxy: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vendor, url = await start_kiro(aiohttp_server, token_ttl=600)
    revoked, healthy = tmp_path / "a.json", tmp_path / "b.json"
    _, doomed_refresh = kiro_token_file(revoked, vendor, ttl=1.0)
    kiro_token_file(healthy, vendor, ttl=600)
    running = await start_proxy(base_config(kiro=[kiro_block(revoked, url, priority=1), kiro_block(healthy, url)]))
    vendor.revoke(doomed_refresh)
    await asyncio.sleep(1.1)  # the first credential's access token expires; its refresh will be refused
    client = running.client()
    for _ in range(4):
        completion = await client.chat.completions.create(model="sonnet", messages=MESSAGES)
        assert completion.choices[0].message.content
    first, second = (c.session for c in running.proxy.runtime.credentials)
    assert first is not None and second is not None
    assert first.state == "rejected" and second.state == "valid"
    assert "refused the refresh token" in (first.last_error or "")
    async with aiohttp.ClientSession() as http, http.get(f"{running.url}/metrics") as response:
        metrics = await response.text()
    assert 'cliproxy_oauth_session_state{credential="kiro[0]",provider="kiro",state="rejected"} 1.0' in metrics
    assert any("refresh rejected" in r.getMessage() for r in caplog.records)
    await assert_no_token_leaked(running.url, vendor, caplog)


async def test_session_providers_reuse_the_openai_adapter(provider: FakeProvider, start_proxy: Any,
                                                          tmp_path: Path) -> None:  # fmt: skip
    """Roo's CLI credentials file, Kilo's auth.json and MiniMax's key file: a bearer token on an OpenAI API."""
    files = {"roo": {"token": "key-a", "userId": "u1"}, "kilo": {"kilo": {"type": "oauth", "access": "key-b"}},
             "minimax": {"access_token": "key-c"}}  # fmt: skip
    config = base_config()
    for block, document in files.items():
        (tmp_path / f"{block}.json").write_text(json.dumps(document))
        config[block] = [{"token-file": str(tmp_path / f"{block}.json"), "base-url": provider.url,
                          "models": [{"name": "up-small", "alias": f"{block}-small"}]}]  # fmt: skip
    running = await start_proxy(config)
    for block, key in (("roo", "key-a"), ("kilo", "key-b"), ("minimax", "key-c")):
        completion = await running.client().chat.completions.create(model=f"{block}-small", messages=MESSAGES)
        assert completion.model == f"{block}-small" and provider.received[-1].key == key


async def test_proxy_never_refreshes_when_told_someone_else_does(
    aiohttp_server: Serve, start_proxy: Any, tmp_path: Path
) -> None:
    """``token-refresh: false`` (what the operator renders): the proxy adopts new tokens, it never asks."""
    vendor, url = await start_kiro(aiohttp_server, token_ttl=600)
    token_file = tmp_path / "kiro.json"
    kiro_token_file(token_file, vendor, ttl=1.0)
    running = await start_proxy(base_config(**{"token-refresh": False, "kiro": [kiro_block(token_file, url)]}))
    proxy = running.app[PROXY]
    await asyncio.sleep(1.1)
    with pytest.raises(openai.APIStatusError) as raised:  # expired, and nobody has delivered a new one yet
        await running.client().chat.completions.create(model="sonnet", messages=MESSAGES)
    assert raised.value.status_code == 502 and raised.value.code == "upstream_token_unavailable"
    kiro_token_file(token_file, vendor, ttl=600)  # the operator's refresh reaches the Secret
    generation = proxy.generation
    await eventually(lambda: proxy.generation > generation)
    completion = await running.client().chat.completions.create(model="sonnet", messages=MESSAGES)
    assert completion.choices[0].message.content
    assert vendor.refreshes == []


async def test_an_idc_login_refreshes_with_the_client_registration_beside_it(
    aiohttp_server: Serve, start_proxy: Any, tmp_path: Path
) -> None:
    """AWS Builder ID / IdC logins: the Kiro IDE keeps the OIDC client in ``<clientIdHash>.json`` next door."""
    from ..fakes.kiro import CLIENT_ID, CLIENT_SECRET

    vendor, url = await start_kiro(aiohttp_server, token_ttl=600)
    token_file = tmp_path / "kiro-auth-token.json"
    kiro_token_file(token_file, vendor, ttl=1.0)
    document = json.loads(token_file.read_text())
    document.update(authMethod="IdC", provider="BuilderId", clientIdHash="0a1b2c")
    token_file.write_text(json.dumps(document))
    (tmp_path / "0a1b2c.json").write_text(json.dumps({"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET,
                                                      "expiresAt": "2099-01-01T00:00:00Z"}))  # fmt: skip
    running = await start_proxy(base_config(kiro=[kiro_block(token_file, url)]))
    await asyncio.sleep(1.1)
    completion = await running.client().chat.completions.create(model="sonnet", messages=MESSAGES)
    assert completion.choices[0].message.content
    assert [r["path"] for r in vendor.refreshes] == ["/token"]
    assert vendor.refreshes[0]["body"]["clientId"] == CLIENT_ID
    written = json.loads(token_file.read_text())
    assert written["clientIdHash"] == "0a1b2c" and "clientSecret" not in written  # the secret stays in its file


async def test_ampcode_reads_the_amp_cli_secrets_and_speaks_anthropic(
    aiohttp_server: Serve, start_proxy: Any, tmp_path: Path
) -> None:
    """The Amp CLI's secrets.json key, sent to Amp's Anthropic pass-through (a strict Anthropic fake here)."""
    from ..fakes.anthropic_upstream import DEFAULT_MODELS, start_anthropic

    claude, url = await start_anthropic(aiohttp_server, keys=frozenset({"sgamp_user_1"}))
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"apiKey@https://ampcode.com/": "sgamp_user_1", "other@https://x/": "y"}))
    entry = {"token-file": str(secrets), "base-url": url, "models": [{"name": DEFAULT_MODELS[0], "alias": "amp"}]}
    running = await start_proxy(base_config(ampcode=[entry]))
    completion = await running.client().chat.completions.create(model="amp", messages=MESSAGES)
    assert completion.choices[0].message.content
    assert claude.invalid == [] and claude.bodies[-1]["model"] == DEFAULT_MODELS[0]
