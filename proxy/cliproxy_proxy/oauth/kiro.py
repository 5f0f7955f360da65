"""Kiro's token file (the Kiro IDE's ``~/.aws/sso/cache/kiro-auth-token.json``, or cliproxyapi++'s) and its refresh.

The token format only: no I/O (see :mod:`.base`), so the proxy and the operator share it. The chat wire is
:mod:`cliproxy_proxy.translate.kiro`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

from .base import RefreshRejected, RefreshRequest, TokenError, TokenSet

DEFAULT_REGION = "us-east-1"
#: Where chat calls go; the region is the token file's (Kiro serves us-east-1).
API_BASE = "https://q.{region}.amazonaws.com"

SOCIAL_REFRESH = "https://prod.{region}.auth.desktop.kiro.dev"  # + /refreshToken
OIDC_REFRESH = "https://oidc.{region}.amazonaws.com"  # + /token
#: How the token file names each field, in the Kiro IDE's style and in cliproxyapi++'s.
_CAMEL = {"access": "accessToken", "refresh": "refreshToken", "expires": "expiresAt", "arn": "profileArn",
          "method": "authMethod", "client_id": "clientId", "client_secret": "clientSecret",
          "start_url": "startUrl", "hash": "clientIdHash"}  # fmt: skip
_SNAKE = {"access": "access_token", "refresh": "refresh_token", "expires": "expires_at", "arn": "profile_arn",
          "method": "auth_method", "client_id": "client_id", "client_secret": "client_secret",
          "start_url": "start_url", "hash": "client_id_hash"}  # fmt: skip
_OIDC_METHODS = frozenset({"idc", "builder-id", "builderid", "iam", "iam_identity_center", "aws-device", "oidc"})
_REJECTIONS = frozenset({
    "invalid_grant", "invalidgrantexception", "expiredtokenexception", "unauthorizedclientexception",
    "invalid_client", "invalidclientexception", "accessdeniedexception", "unauthorized_client",
})  # fmt: skip


class Secret(str):
    """A client secret kept in ``TokenSet.extra``: a plain string everywhere except in reprs."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<redacted>'"


def _epoch(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1000 if value > 1e11 else float(value)
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise TokenError("expiresAt: not an ISO-8601 time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _iso(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _reason(body: bytes) -> str:
    """The refusal's error code or message, short and free of anything token-like."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(document, dict):
        return ""
    for key in ("error", "__type", "code", "message"):
        value = document.get(key)
        if isinstance(value, str) and value:
            return value.rsplit("#", 1)[-1][:80]
    return ""


class KiroTokenFormat:
    """The Kiro IDE's ``~/.aws/sso/cache/kiro-auth-token.json`` (camelCase) and cliproxyapi++'s snake_case file.

    ``extra`` holds: ``style`` (camel/snake), ``auth_method`` (lower-cased: social, idc, builder-id),
    ``provider``, ``profile_arn``, ``region``, ``client_id``, ``client_secret`` (a :class:`Secret`),
    ``client_id_hash``, ``start_url``. The Kiro IDE keeps an IdC login's client id and secret in a second file,
    ``~/.aws/sso/cache/<clientIdHash>.json``: read it and pass it to :meth:`with_registration` before refreshing.

    ``social_url`` and ``oidc_url`` replace the refresh hosts (tests point them at a fake); the paths
    ``/refreshToken`` and ``/token`` are appended.
    """

    name = "kiro"

    def __init__(self, social_url: str | None = None, oidc_url: str | None = None,
                 registration: bytes | None = None) -> None:  # fmt: skip
        self.social_url = social_url.rstrip("/") if social_url else None
        self.oidc_url = oidc_url.rstrip("/") if oidc_url else None
        self.registration = registration  # the IdC client registration file, applied to every parse

    def parse(self, raw: bytes) -> TokenSet:
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TokenError("Kiro token file is not JSON") from None
        if not isinstance(document, dict):
            raise TokenError("Kiro token file is not a JSON object")
        style = "camel" if "accessToken" in document or "refreshToken" in document else "snake"
        names = _CAMEL if style == "camel" else _SNAKE
        access, refresh = document.get(names["access"]), document.get(names["refresh"])
        if not isinstance(access, str) or not access:
            raise TokenError(f"Kiro token file has no {names['access']}")
        extra: dict[str, Any] = {"style": style}
        for key, name in (("profile_arn", "arn"), ("client_id", "client_id"), ("start_url", "start_url"),
                          ("client_id_hash", "hash"), ("auth_method", "method")):  # fmt: skip
            value = document.get(names[name])
            if isinstance(value, str) and value:
                extra[key] = value.lower() if key == "auth_method" else value
        for key in ("provider", "region", "email"):
            if isinstance(document.get(key), str) and document[key]:
                extra[key] = document[key]
        secret = document.get(names["client_secret"])
        if isinstance(secret, str) and secret:
            extra["client_secret"] = Secret(secret)
        refresh_token = refresh if isinstance(refresh, str) and refresh else None
        tokens = TokenSet(access, refresh_token, _epoch(document.get(names["expires"])), extra)
        if self.registration is not None and "client_id" not in extra:
            tokens = self.with_registration(tokens, self.registration)
        return tokens

    @staticmethod
    def with_registration(tokens: TokenSet, raw: bytes) -> TokenSet:
        """Adds the client id and secret from the IdC device registration file (``<clientIdHash>.json``)."""
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TokenError("Kiro device registration is not JSON") from None
        client_id = document.get("clientId") if isinstance(document, dict) else None
        secret = document.get("clientSecret") if isinstance(document, dict) else None
        if not isinstance(client_id, str) or not isinstance(secret, str) or not client_id or not secret:
            raise TokenError("Kiro device registration has no clientId/clientSecret")
        extra = {**tokens.extra, "client_id": client_id, "client_secret": Secret(secret), "registration": True}
        return tokens.replace(extra=extra)

    def dump(self, tokens: TokenSet, previous: bytes | None) -> bytes:
        document: dict[str, Any] = {}
        if previous:
            try:
                loaded = orjson.loads(previous)
            except orjson.JSONDecodeError:
                loaded = None
            document = loaded if isinstance(loaded, dict) else {}
        style = tokens.extra.get("style") or ("camel" if "accessToken" in document else "snake")
        names = _CAMEL if style == "camel" else _SNAKE
        document[names["access"]] = tokens.access_token
        if tokens.refresh_token:
            document[names["refresh"]] = tokens.refresh_token
        if tokens.expires_at is not None:
            document[names["expires"]] = _iso(tokens.expires_at)
        if tokens.extra.get("profile_arn"):
            document[names["arn"]] = str(tokens.extra["profile_arn"])
        if style == "snake":  # cliproxyapi++'s own file: its keys are extra's keys
            document.setdefault("type", "kiro")
            document["last_refresh"] = _iso(time.time())
            for key in ("auth_method", "provider", "region", "client_id", "start_url"):
                if tokens.extra.get(key):
                    document.setdefault(key, str(tokens.extra[key]))
            if tokens.extra.get("client_secret") and not tokens.extra.get("registration"):
                document.setdefault("client_secret", str(tokens.extra["client_secret"]))
        return orjson.dumps(document, option=orjson.OPT_INDENT_2)

    def _method(self, tokens: TokenSet) -> str:
        method = str(tokens.extra.get("auth_method") or "")
        if method == "social":
            return "social"
        if method in _OIDC_METHODS or tokens.extra.get("client_id") or tokens.extra.get("client_id_hash"):
            return "oidc"
        return "social"  # the Kiro IDE's default login (Google / GitHub) writes no client

    def refresh_request(self, tokens: TokenSet) -> RefreshRequest | None:
        if not tokens.refresh_token:
            return None
        region = str(tokens.extra.get("region") or DEFAULT_REGION)
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "KiroIDE"}
        if self._method(tokens) == "social":
            base = self.social_url or SOCIAL_REFRESH.format(region=region)
            body = orjson.dumps({"refreshToken": tokens.refresh_token})
            return RefreshRequest(f"{base}/refreshToken", headers, body)
        client_id, secret = tokens.extra.get("client_id"), tokens.extra.get("client_secret")
        if not client_id or not secret:
            raise TokenError("Kiro IdC login needs its device registration (clientId/clientSecret) to refresh")
        base = self.oidc_url or OIDC_REFRESH.format(region=region)
        body = orjson.dumps({"clientId": str(client_id), "clientSecret": str(secret), "grantType": "refresh_token",
                             "refreshToken": tokens.refresh_token})  # fmt: skip
        return RefreshRequest(f"{base}/token", headers, body)

    def parse_refresh(self, tokens: TokenSet, status: int, body: bytes) -> TokenSet:
        if status != 200:
            reason = _reason(body)
            if status in (401, 403) or (status == 400 and reason.lower() in _REJECTIONS):
                raise RefreshRejected(f"Kiro refused the refresh token (HTTP {status} {reason})".replace(" )", ")"))
            raise TokenError(f"Kiro token refresh failed: HTTP {status} {reason}".rstrip())
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise TokenError("Kiro token refresh answer is not JSON") from None
        access = document.get("accessToken") if isinstance(document, dict) else None
        if not isinstance(access, str) or not access:
            raise TokenError("Kiro token refresh answer has no accessToken")
        assert isinstance(document, dict)
        refresh = document.get("refreshToken")
        expires_in = document.get("expiresIn")
        expires_at = time.time() + float(expires_in) if isinstance(expires_in, int | float) else None
        extra = dict(tokens.extra)
        if isinstance(document.get("profileArn"), str) and document["profileArn"]:
            extra["profile_arn"] = document["profileArn"]
        return tokens.replace(
            access_token=access,
            refresh_token=refresh if isinstance(refresh, str) and refresh else tokens.refresh_token,
            expires_at=expires_at,
            extra=extra,
        )


def api_base(tokens: TokenSet | None = None) -> str:
    """The chat API of the token file's region."""
    region = str((tokens.extra.get("region") if tokens else None) or DEFAULT_REGION)
    return API_BASE.format(region=region)
