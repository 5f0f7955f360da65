"""Cloud identities as token sessions: google-auth against a strict fake of Google's token endpoint, and
azure-identity against a fake Entra (client secret, and AKS Workload Identity's federated token)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from cliproxy_proxy.config import ConfigError, parse_config
from cliproxy_proxy.oauth import cloud
from cliproxy_proxy.oauth.base import TokenError

from ..fakes.azure_openai import Entra, serve_entra, trusted_tls
from ..fakes.google_identity import account_key, start_google_identity


@pytest.fixture
def server_tls(monkeypatch: pytest.MonkeyPatch) -> Iterator[ssl.SSLContext]:
    with trusted_tls(monkeypatch) as context:
        yield context


@pytest.fixture
async def entra(server_tls: ssl.SSLContext) -> AsyncIterator[Entra]:
    async with serve_entra(server_tls) as state:
        yield state


async def test_a_service_account_key_gets_a_token_signed_by_its_own_key(aiohttp_server) -> None:
    identity = await start_google_identity(aiohttp_server)
    session = cloud.CloudSession("vertex", cloud.google_fetch(cloud.service_account(identity.key_file())))
    assert session.state == "expired"  # nothing fetched before the first request
    await session.ensure_fresh()
    assert identity.valid(session.access_token())
    assert identity.grants == 1 and not identity.refusals
    await session.ensure_fresh()  # a current token is reused: no second grant
    assert identity.grants == 1


async def test_a_key_the_endpoint_does_not_know_is_refused_without_key_text(aiohttp_server) -> None:
    identity = await start_google_identity(aiohttp_server)
    stranger = await start_google_identity(aiohttp_server, key=account_key(1))  # another account's key
    forged = {**stranger.key_file(), "client_email": identity.email, "token_uri": identity.url}
    session = cloud.CloudSession("vertex", cloud.google_fetch(cloud.service_account(forged)))
    with pytest.raises(TokenError) as raised:
        await session.ensure_fresh()
    assert identity.refusals == ["Invalid JWT Signature."]
    assert "PRIVATE KEY" not in str(raised.value) and "BEGIN" not in (session.last_error or "x BEGIN")
    await session.close()


def test_a_service_account_file_must_hold_a_usable_key() -> None:
    with pytest.raises(TokenError, match="type"):
        cloud.service_account({"type": "authorized_user"})
    with pytest.raises(TokenError, match="private_key"):
        cloud.service_account({"type": "service_account", "client_email": "a@b", "token_uri": "https://t"})
    with pytest.raises(TokenError, match="cannot be read") as raised:
        broken = "-----BEGIN PRIVATE KEY-----\nnot-a-key\n-----END PRIVATE KEY-----\n"
        cloud.service_account(
            {"type": "service_account", "client_email": "a@b", "token_uri": "https://t", "private_key": broken}
        )
    assert "not-a-key" not in str(raised.value)


async def first_token(make: Callable[[], object]) -> str:
    """The first token an azure-identity credential gets through a session, which is closed after."""
    session = cloud.azure_session("azure", make)
    try:
        await session.ensure_fresh()
        return session.access_token()
    finally:
        await session.close()


async def test_entra_client_secret_gets_a_cognitive_services_token(entra: Entra) -> None:
    token = await first_token(lambda: cloud.azure_credential(entra.tenant, entra.client_id, entra.client_secret,
                                                             entra.url))  # fmt: skip
    assert entra.valid(token) and entra.grants == ["secret"]


async def test_aks_workload_identity_through_the_default_chain(
    entra: Entra, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The AKS webhook's environment: a projected service-account token exchanged as a client assertion."""
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(entra.federated_token)
    monkeypatch.setenv("AZURE_TENANT_ID", entra.tenant)
    monkeypatch.setenv("AZURE_CLIENT_ID", entra.client_id)
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", entra.url)
    token = await first_token(lambda: cloud.azure_credential(None, None, None, None))
    assert entra.valid(token) and entra.grants == ["assertion"]


async def test_a_wrong_entra_secret_is_a_token_error_naming_no_secret(entra: Entra) -> None:
    with pytest.raises(TokenError) as raised:
        await first_token(
            lambda: cloud.azure_credential(entra.tenant, entra.client_id, "wrong-secret-value", entra.url)
        )
    assert "wrong-secret-value" not in str(raised.value) and entra.grants == []


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"vertex-api-key": [{"service-account-file": "sa.json"}]}, "need a project"),
        ({"vertex-api-key": [{"adc": True, "api-key": "k", "project": "demo-project"}]}, "exactly one of"),
        ({"azure-openai": [{"api-key": "k", "models": [{"name": "d"}]}]}, "resource or base-url"),
        ({"azure-openai": [{"api-key": "k", "resource": "contoso"}]}, "list the deployments"),
        (
            {
                "azure-openai": [
                    {"api-key": "k", "resource": "contoso", "models": [{"name": "../v1/files?x=", "alias": "m"}]}
                ]
            },
            "not a deployment name",
        ),
        ({"azure-openai": [{"api-key": "k", "resource": "contoso", "models": [{"name": ".."}]}]}, "not a deployment"),
        ({"azure-openai": [{"entra": {"client-secret": "s"}, "resource": "contoso", "api": "v1"}]}, "tenant-id"),
        (
            {"azure-openai": [{"api-key": "k", "resource": "contoso", "api": "v1", "api-version": "latest"}]},
            "api-version",
        ),
        (
            {"azure-openai": [{"entra": {"authority": "http://login.example"}, "resource": "contoso", "api": "v1"}]},
            "https",
        ),
    ],
)
def test_cloud_blocks_refuse_what_cannot_work(block: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        parse_config(block)
    assert "client-secret: s" not in str(raised.value)


def test_cloud_blocks_accept_each_identity() -> None:
    config = parse_config({
        "vertex-api-key": [{"service-account-file": "sa.json", "project": "demo-project"},
                           {"adc": True, "project": "demo-project", "location": "global"}],
        "azure-openai": [{"resource": "contoso", "api-key": "k", "models": [{"name": "gpt4o-prod", "alias": "gpt-4o"}]},
                         {"base-url": "https://contoso.cognitiveservices.azure.com", "api": "v1", "entra": {},
                          "models": [{"name": "gpt-4o"}]}],
    })  # fmt: skip
    assert [v.identity for v in config.vertex_api_key] == [True, True]
    assert [a.endpoint for a in config.azure_openai] == [
        "https://contoso.openai.azure.com", "https://contoso.cognitiveservices.azure.com"]  # fmt: skip
