"""Cloud identities (Google service accounts and ADC, Microsoft Entra ID) as token sessions.

A cloud access token is one more token that expires: it rides on :class:`~.session.Session`, so the request path,
the refresh-ahead, the single refresh in flight, the backoff, the state metric and the scrubbing of error bodies
are the ones every session has. Only the refresh differs: instead of posting a refresh token, it asks the cloud's
own library (``google-auth``, ``azure-identity``), which knows service-account JWTs, ADC, the GKE metadata
server, workload identity federation and client secrets. google-auth is synchronous: it runs in a thread, never
on the event loop. azure-identity has an asyncio flavour, used as is.

The libraries are imported when a token is first fetched, so a proxy without cloud blocks never loads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .base import RefreshRequest, TokenError, TokenSet
from .session import MemoryStore, Session

GOOGLE_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"

#: Asks the cloud library for a token: (access token, expiry in epoch seconds).
Fetch = Callable[[], Awaitable[tuple[str, float]]]


class CloudFormat:
    """The :class:`TokenFormat` of a cloud identity: nothing on disk, and a "refresh" that asks the library."""

    def __init__(self, name: str) -> None:
        self.name = name

    def parse(self, raw: bytes) -> TokenSet:
        if not raw:  # no token yet: expired from the start, so the first request fetches one
            return TokenSet(access_token="", expires_at=0.0)
        document = orjson.loads(raw)
        return TokenSet(access_token=document["access_token"], expires_at=float(document["expires_at"]))

    def dump(self, tokens: TokenSet, previous: bytes | None) -> bytes:
        return b""  # kept in memory only: a cloud token is never written anywhere

    def refresh_request(self, tokens: TokenSet) -> RefreshRequest:
        return RefreshRequest(url=f"cloud:{self.name}", headers={}, body=b"")

    def parse_refresh(self, tokens: TokenSet, status: int, body: bytes) -> TokenSet:
        return self.parse(body)


class CloudSession(Session):
    """A session whose tokens come from a cloud identity library; ``release`` closes the library's client."""

    def __init__(self, name: str, fetch: Fetch, release: Callable[[], Awaitable[None]] | None = None) -> None:
        async def post(request: RefreshRequest) -> tuple[int, bytes]:
            token, expires_at = await fetch()
            return 200, orjson.dumps({"access_token": token, "expires_at": expires_at})

        super().__init__(CloudFormat(name), MemoryStore(), post, refresh=True, name=name)
        self.adopt(b"")
        self._release = release

    async def close(self) -> None:
        await super().close()
        if self._release is not None:
            await self._release()


# -- Google --------------------------------------------------------------------------------------------------


def service_account(info: dict[str, Any]) -> Any:
    """google-auth's credentials for a service-account key file; raises TokenError naming no key material."""
    from google.oauth2 import service_account as sa

    if info.get("type") != "service_account":
        raise TokenError("not a service-account key file (its 'type' must be 'service_account')")
    missing = [name for name in ("client_email", "private_key", "token_uri") if not isinstance(info.get(name), str)]
    if missing:
        raise TokenError(f"the service-account key file lacks {', '.join(missing)}")
    try:
        return sa.Credentials.from_service_account_info(info, scopes=[GOOGLE_SCOPE])  # type: ignore[no-untyped-call]
    except (ValueError, TypeError):
        raise TokenError("the service-account key file's private key cannot be read") from None


def google_fetch(credentials: Any | None) -> Fetch:
    """Tokens from google-auth credentials, or from Application Default Credentials (``None``): a key file named
    by GOOGLE_APPLICATION_CREDENTIALS, gcloud's login, or the metadata server (GKE Workload Identity)."""
    from google.auth.transport.requests import Request

    held: list[Any] = [credentials] if credentials is not None else []

    def refresh() -> tuple[str, float]:
        import google.auth
        from google.auth.exceptions import GoogleAuthError

        try:
            if not held:
                held.append(google.auth.default(scopes=[GOOGLE_SCOPE])[0])
            creds = held[0]
            creds.refresh(Request())
        except GoogleAuthError as error:
            raise TokenError(f"google-auth could not get an access token ({type(error).__name__})") from None
        expiry = creds.expiry  # naive UTC, as google-auth keeps it
        expires_at = expiry.replace(tzinfo=UTC).timestamp() if isinstance(expiry, datetime) else _an_hour()
        return str(creds.token), expires_at

    async def fetch() -> tuple[str, float]:
        return await asyncio.to_thread(refresh)

    return fetch


def _an_hour() -> float:
    return datetime.now(UTC).timestamp() + 3600.0


# -- Microsoft Entra ID ------------------------------------------------------------------------------------


def _trust() -> dict[str, Any]:
    """Entra is reached trusting what the proxy's upstream pool trusts (OpenSSL's ``SSL_CERT_FILE``)."""
    bundle = os.environ.get("SSL_CERT_FILE")
    return {"connection_verify": bundle} if bundle else {}


def azure_credential(tenant_id: str | None, client_id: str | None, client_secret: str | None,
                     authority: str | None) -> Any:  # fmt: skip
    """An asyncio azure-identity credential: a client secret when one is given, otherwise the default chain
    (environment, AKS Workload Identity's federated token, managed identity, the Azure CLI)."""
    from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential

    options: dict[str, Any] = {**_trust(), **({"authority": authority} if authority else {})}
    if client_secret is not None:
        assert tenant_id is not None and client_id is not None  # the config requires them with a secret
        return ClientSecretCredential(tenant_id, client_id, client_secret, **options)
    if client_id:
        options.update(managed_identity_client_id=client_id, workload_identity_client_id=client_id)
    if tenant_id:
        options["workload_identity_tenant_id"] = tenant_id
    return DefaultAzureCredential(exclude_interactive_browser_credential=True, **options)


def azure_session(name: str, make: Callable[[], Any], scope: str = AZURE_SCOPE) -> CloudSession:
    """A session over an azure-identity credential, made on first use (its HTTP client belongs to the loop)."""
    held: list[Any] = []

    async def fetch() -> tuple[str, float]:
        from azure.core.exceptions import AzureError

        if not held:
            held.append(make())
        try:
            token = await held[0].get_token(scope)
        except AzureError as error:
            raise TokenError(f"azure-identity could not get a token ({type(error).__name__})") from None
        return token.token, float(token.expires_on)

    async def release() -> None:
        if held:
            with contextlib.suppress(Exception):
                await held.pop().close()

    return CloudSession(name, fetch, release)


# -- config entries ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """A config entry's cloud identity: what makes its session (once per snapshot that changes it)."""

    source: str  # a digest of what identifies it (a key file's content, an application's ids): the session's key
    make: Callable[[str], CloudSession]  # the session, given its name


def identity_of(entry: object, read: Callable[[Any, str | None, str], str], where: str) -> Identity | None:
    """The cloud identity of a ``vertex-api-key`` or ``azure-openai`` entry, or None when it uses a fixed key.

    ``read(inline, file, where)`` reads a secret (a key file, a client secret), so reloads watch its file.
    Raises ConfigError naming the entry when a key file cannot be used.
    """
    from ..config import AzureOpenAICredential, ConfigError, VertexCredential

    if isinstance(entry, VertexCredential) and entry.identity:
        if entry.adc:
            return Identity("adc", lambda name: CloudSession(name, google_fetch(None)))
        text = read(None, entry.service_account_file, f"{where}.service-account-file")
        try:
            document = orjson.loads(text)
            if not isinstance(document, dict):
                raise TokenError("the service-account key file is not a JSON object")
            credentials = service_account(document)
        except orjson.JSONDecodeError:
            raise ConfigError(f"{where}.service-account-file: not a JSON service-account key file") from None
        except TokenError as error:
            raise ConfigError(f"{where}.service-account-file: {error}") from None
        return Identity(_digest(text), lambda name: CloudSession(name, google_fetch(credentials)))
    if isinstance(entry, AzureOpenAICredential) and entry.entra is not None:
        entra = entry.entra
        given = entra.client_secret is not None or entra.client_secret_file is not None
        secret = read(entra.client_secret, entra.client_secret_file, f"{where}.entra") if given else None
        ids = (entra.tenant_id, entra.client_id, entra.authority)

        def make(name: str) -> CloudSession:
            return azure_session(name, lambda: azure_credential(*ids[:2], secret, ids[2]))

        return Identity(_digest("\0".join(str(part) for part in (*ids, secret))), make)
    return None


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
