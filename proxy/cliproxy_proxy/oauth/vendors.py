"""The OAuth / session blocks: which token file each reads, and where and how its tokens are presented.

Sources for every choice are in ``docs/providers.md``. Only Kiro has a wire of its own; the others are an
OpenAI- or Anthropic-shaped endpoint taking the session token as a bearer key, and reuse those adapters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..config import AmpCredential, CursorCredential, KiroCredential, _Routed
from ..translate.kiro import KiroTokenFormat, api_base
from ..upstream import Pool
from .base import TokenFormat, TokenSet
from .formats import StaticKeyFormat
from .session import FileStore, MemoryStore, Session, TokenStore, pool_post

#: The key each vendor's own tool writes, looked up in this order (a bare key in the file works too).
KEY_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "cursor": (("accessToken",), ("access_token",), ("api_key",)),  # cursor-agent auth.json, or a sidecar key
    "minimax": (("access_token",), ("api_key",)),  # cliproxyapi++'s order
    "roo": (("token",),),  # the Roo CLI's cli-credentials.json
    "kilo": (("kilo", "access"), ("kilo", "key"), ("kilocodeToken",)),  # kilo auth.json, cliproxyapi++'s file
    "ampcode": (("apiKey@https://ampcode.com/",), ("apiKey",)),  # the Amp CLI's secrets.json
}


def token_format(block: str, refresh_url: str | None = None, registration: bytes | None = None) -> TokenFormat:
    """The token file format of a session block; ``refresh_url`` replaces the vendor's refresh host, and
    ``registration`` is a Kiro IdC login's client registration (see :func:`kiro_registration`)."""
    if block == "kiro":
        return KiroTokenFormat(social_url=refresh_url, oidc_url=refresh_url, registration=registration)
    return StaticKeyFormat(block, *KEY_PATHS[block])


def registration_name(token_file: bytes) -> str | None:
    """Where an IdC / Builder ID login's client registration is: the Kiro IDE keeps it beside the token file
    as ``<clientIdHash>.json``, and refreshing needs its client id and secret. None for other logins."""
    try:
        document = orjson.loads(token_file)
    except orjson.JSONDecodeError:
        return None
    hashed = document.get("clientIdHash") if isinstance(document, dict) else None
    if not isinstance(hashed, str) or not hashed.isalnum() or document.get("clientId"):
        return None
    return f"{hashed}.json"


def kiro_registration(token_file: Path, raw: bytes) -> bytes | None:
    name = registration_name(raw)
    try:
        return (token_file.parent / name).read_bytes() if name else None
    except OSError:
        return None


def base_url_of(entry: _Routed, tokens: TokenSet, default: str) -> str:
    """Where a session credential is called: Kiro's region comes with its tokens."""
    if entry.base_url:
        return entry.base_url
    if isinstance(entry, KiroCredential):
        return api_base(tokens.replace(extra={"region": tokens.extra.get("region") or entry.region}))
    if isinstance(entry, CursorCredential) and entry.cursor_api_url:
        return entry.cursor_api_url.rstrip("/") + "/v1"
    if isinstance(entry, AmpCredential) and entry.upstream_url:
        return entry.upstream_url.rstrip("/") + "/api/provider/anthropic"
    return default


def session_headers(block: str, tokens: TokenSet) -> dict[str, str]:
    """Fixed headers a vendor wants beside the token (Kilo's organisation)."""
    org = tokens.extra.get("organization")
    return {"X-KILOCODE-ORGANIZATIONID": str(org)} if block == "kilo" and org else {}


def inline_document(entry: _Routed) -> bytes | None:
    """Tokens written in the config itself, as the file the vendor's tool would have written."""
    if isinstance(entry, KiroCredential) and entry.access_token is not None:
        document = {"accessToken": entry.access_token.get_secret_value(), "region": entry.region}
        if entry.refresh_token is not None:
            document["refreshToken"] = entry.refresh_token.get_secret_value()
        if entry.profile_arn:
            document["profileArn"] = entry.profile_arn
        return orjson.dumps(document)
    secret = getattr(entry, "auth_token", None) or getattr(entry, "upstream_api_key", None)
    if isinstance(entry, CursorCredential | AmpCredential) and secret is not None:
        return str(secret.get_secret_value()).encode()
    return None  # a token file


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """What identifies one live session: the same spec after a reload is the same session."""

    block: str
    where: str
    source: str  # the token file's path, or a hash of tokens that came from the config or a Secret
    refresh: bool
    proxy_url: str | None


class Sessions:
    """Live sessions, kept across config reloads so that a refresh in flight (and its rotation) is not lost."""

    def __init__(self, pool: Pool | None = None) -> None:
        self.pool = pool or Pool()
        self.live: dict[SessionSpec, Session] = {}

    def get(self, spec: SessionSpec, fmt: TokenFormat, raw: bytes, path: Path | None) -> Session:
        """The session for ``spec``, created around ``raw`` (already parsed once to validate it)."""
        session = self.live.get(spec)
        if session is None:
            store: TokenStore = FileStore(path) if path is not None and spec.refresh else MemoryStore(raw)
            post = pool_post(self.pool, proxy_url=spec.proxy_url)
            session = Session(fmt, store, post, refresh=spec.refresh, name=spec.where)
            session.adopt(raw)
            self.live[spec] = session
        return session

    async def retire(self, keep: set[Session]) -> None:
        """Close the sessions a new config no longer uses."""
        for spec in [spec for spec, session in self.live.items() if session not in keep]:
            await self.live.pop(spec).close()


def content_source(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()
