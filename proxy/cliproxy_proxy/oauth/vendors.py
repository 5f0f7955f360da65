"""The OAuth / session blocks: which token file each reads, and where and how its tokens are presented.

Sources for every choice are in ``docs/providers.md``. Only Kiro has a wire of its own; the others are an
OpenAI- or Anthropic-shaped endpoint taking the session token as a bearer key, and reuse those adapters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..config import AmpCredential, CursorCredential, KiroCredential, SessionCredential, _Routed
from ..upstream import Pool
from .base import TokenFormat, TokenSet
from .kiro import api_base
from .session import FileStore, MemoryStore, Session, TokenStore, pool_post
from .tokens import registration_name


def registration(block: str, token_file: Path | None, raw: bytes) -> bytes | None:
    """The client registration a session's refresh needs beside its token file (a Kiro IdC login's), if any."""
    if block != "kiro" or token_file is None:
        return None
    name = registration_name(raw)
    try:
        return (token_file.parent / name).read_bytes() if name else None
    except OSError:
        return None


def is_session(entry: _Routed) -> bool:
    """Whether an entry's credential is a session (tokens kept fresh), rather than a plain key."""
    return isinstance(entry, KiroCredential | CursorCredential | AmpCredential) or (
        isinstance(entry, SessionCredential) and entry.token_file is not None
    )


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
