"""Generic token formats: standard RFC 6749 refresh, and a static key that never refreshes.

Vendor formats (Kiro and others) live in their own modules; these two serve simple vendors and the tests.
Files are written back in the shape they were read (indentation, expiry style, unknown fields), because the
vendor's own tool reads the same file.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from .base import RefreshRejected, RefreshRequest, TokenError, TokenSet

_ERROR_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_REJECTED = frozenset({"invalid_grant", "invalid_token"})  # RFC 6749 §5.2, RFC 6750 §3.1: a new login helps


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise TokenError(f"{what} is not JSON") from None  # the decoder's message may quote the document
    if not isinstance(doc, dict):
        raise TokenError(f"{what} is not a JSON object")
    return doc


def _previous_object(previous: bytes | None) -> dict[str, Any]:
    if not previous:
        return {}
    try:
        doc = json.loads(previous)
    except (ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _dump_like(doc: Mapping[str, Any], previous: bytes | None) -> bytes:
    """JSON laid out as ``previous`` was (indent, compact separators, final newline) so diffs stay small."""
    if not previous:
        return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()
    text = previous.decode("utf-8", errors="replace")
    lines = text.strip().splitlines()
    if len(lines) > 1:
        second = lines[1]
        indent: int | str | None = second[: len(second) - len(second.lstrip())] or None
        if isinstance(indent, str) and indent.strip(" ") == "":
            indent = len(indent)
        out = json.dumps(doc, indent=indent, ensure_ascii=False)
    elif '": ' in text or '", ' in text:
        out = json.dumps(doc, ensure_ascii=False)
    else:
        out = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    return (out + ("\n" if text.endswith("\n") else "")).encode()


def _read_expiry(value: Any) -> float | None:
    """Epoch seconds from epoch seconds, epoch milliseconds or an ISO-8601 string."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) / 1000.0 if value > 1e11 else float(value)
    if isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise TokenError("the token expiry is not a date") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    raise TokenError("the token expiry is not a number or date")


def _write_expiry(expires_at: float, like: Any) -> Any:
    """``expires_at`` in the style of the value it replaces."""
    if isinstance(like, str):
        text = datetime.fromtimestamp(expires_at, UTC).isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z") if like.endswith("Z") else text
    if isinstance(like, int | float) and not isinstance(like, bool) and like > 1e11:
        return round(expires_at * 1000)
    if isinstance(like, int) and not isinstance(like, bool):
        return round(expires_at)
    return expires_at


def _error_code(body: bytes) -> str | None:
    """The RFC 6749 ``error`` code, only when it looks like one: descriptions may echo what was sent."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    code = doc.get("error") if isinstance(doc, dict) else None
    return code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None


class OAuth2Format:
    """A JSON token file refreshed with RFC 6749 §6 ``grant_type=refresh_token``.

    The file's field names are configurable; the refresh answer is read under the same names, falling back to
    the RFC's. ``clock`` turns ``expires_in`` into an epoch time (tests share a fake clock with the session).
    """

    def __init__(
        self,
        name: str,
        token_url: str,
        client_id: str | None = None,
        *,
        client_secret: str | None = None,
        scope: str | None = None,
        json_body: bool = False,
        access_field: str = "access_token",
        refresh_field: str = "refresh_token",
        expires_at_field: str = "expires_at",
        expires_in_field: str = "expires_in",
        extra_fields: tuple[str, ...] = (),
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self.json_body = json_body
        self.access_field = access_field
        self.refresh_field = refresh_field
        self.expires_at_field = expires_at_field
        self.expires_in_field = expires_in_field
        self.extra_fields = extra_fields
        self.headers = dict(headers or {})
        self.clock = clock

    def __repr__(self) -> str:
        return f"OAuth2Format({self.name!r}, {self.token_url!r})"

    def parse(self, raw: bytes) -> TokenSet:
        doc = _json_object(raw, f"{self.name} token file")
        access = doc.get(self.access_field)
        if not isinstance(access, str) or not access:
            raise TokenError(f"{self.name} token file has no {self.access_field}")
        refresh = doc.get(self.refresh_field)
        extra = {key: doc[key] for key in self.extra_fields if key in doc}
        return TokenSet(access, refresh if isinstance(refresh, str) and refresh else None,
                        _read_expiry(doc.get(self.expires_at_field)), extra)  # fmt: skip

    def dump(self, tokens: TokenSet, previous: bytes | None) -> bytes:
        doc = _previous_object(previous)
        doc[self.access_field] = tokens.access_token
        if tokens.refresh_token is not None:
            doc[self.refresh_field] = tokens.refresh_token
        if tokens.expires_at is not None:
            doc[self.expires_at_field] = _write_expiry(tokens.expires_at, doc.get(self.expires_at_field))
        doc.pop(self.expires_in_field, None)  # relative to a moment the file does not record: stale once written
        for key in self.extra_fields:
            if key in tokens.extra:
                doc[key] = tokens.extra[key]
        return _dump_like(doc, previous)

    def refresh_request(self, tokens: TokenSet) -> RefreshRequest | None:
        if not tokens.refresh_token:
            return None
        fields = {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token}
        for key, value in (("client_id", self.client_id), ("client_secret", self._client_secret),
                           ("scope", self.scope)):  # fmt: skip
            if value is not None:
                fields[key] = value
        if self.json_body:
            body, kind = json.dumps(fields).encode(), "application/json"
        else:
            body, kind = urlencode(fields).encode(), "application/x-www-form-urlencoded"
        headers = {"Content-Type": kind, "Accept": "application/json", **self.headers}
        return RefreshRequest(self.token_url, headers, body)

    def parse_refresh(self, tokens: TokenSet, status: int, body: bytes) -> TokenSet:
        if not 200 <= status < 300:
            code = _error_code(body)
            detail = f"HTTP {status}" + (f", {code}" if code else "")
            if code in _REJECTED:
                raise RefreshRejected(f"{self.name}: the refresh token was rejected ({detail}); log in again")
            raise TokenError(f"{self.name}: refresh failed ({detail})")
        doc = _json_object(body, f"{self.name} refresh answer")

        def pick(field: str, standard: str) -> Any:
            return doc[field] if field in doc else doc.get(standard)

        access = pick(self.access_field, "access_token")
        if not isinstance(access, str) or not access:
            raise TokenError(f"{self.name}: the refresh answer has no access token")
        refresh = pick(self.refresh_field, "refresh_token")
        expires_in = pick(self.expires_in_field, "expires_in")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            expires_at: float | None = self.clock() + float(expires_in)
        else:
            expires_at = _read_expiry(pick(self.expires_at_field, "expires_at"))
        extra = {**tokens.extra, **{key: doc[key] for key in self.extra_fields if key in doc}}
        return tokens.replace(
            access_token=access,
            refresh_token=refresh if isinstance(refresh, str) and refresh else tokens.refresh_token,  # not rotated
            expires_at=expires_at,
            extra=extra,
        )


class StaticKeyFormat:
    """A file holding a bare key, or a JSON object with the key at the first of ``paths``; it never expires."""

    def __init__(self, name: str = "static", *paths: tuple[str, ...]) -> None:
        self.name = name
        self.paths = paths or (("api_key",),)

    def __repr__(self) -> str:
        return f"StaticKeyFormat({self.name!r}, {self.paths!r})"

    def _find(self, doc: Mapping[str, Any]) -> tuple[tuple[str, ...], str] | None:
        for path in self.paths:
            node: Any = doc
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, str) and node.strip():
                return path, node.strip()
        return None

    def parse(self, raw: bytes) -> TokenSet:
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise TokenError(f"{self.name} key file is not UTF-8") from None
        if text.startswith("{"):
            doc = _json_object(raw, f"{self.name} key file")
            found = self._find(doc)
            if found is None:
                names = " or ".join(".".join(p) for p in self.paths)
                raise TokenError(f"{self.name} key file has no {names}")
            extra = {"organization": org} if isinstance(org := _organization(doc), str) else {}
            return TokenSet(found[1], extra=extra)
        if not text or any(c.isspace() for c in text):
            raise TokenError(f"{self.name} key file must hold one key")
        return TokenSet(text)

    def dump(self, tokens: TokenSet, previous: bytes | None) -> bytes:
        if previous and previous.strip().startswith(b"{"):
            doc = _previous_object(previous)
            found = self._find(doc)
            path = found[0] if found else self.paths[0]
            node = doc
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = tokens.access_token
            return _dump_like(doc, previous)
        newline = previous is None or previous.endswith(b"\n")
        return (tokens.access_token + ("\n" if newline else "")).encode()

    def refresh_request(self, tokens: TokenSet) -> RefreshRequest | None:
        return None

    def parse_refresh(self, tokens: TokenSet, status: int, body: bytes) -> TokenSet:
        raise TokenError(f"{self.name}: a static key cannot be refreshed")


def _organization(doc: Mapping[str, Any]) -> Any:
    """Kilo's organisation id, under either of its tools' names."""
    kilo = doc.get("kilo")
    return (kilo.get("accountId") if isinstance(kilo, dict) else None) or doc.get("kilocodeOrganizationId")
