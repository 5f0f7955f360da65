"""The operator as the single refresher of OAuth / session tokens; proxies only adopt what it writes.

Several proxy replicas refreshing on their own would spend each other's rotating refresh tokens. Here one
operator checks each ProviderCredential with a ``tokenSecretRef``, refreshes ahead of expiry with the same
vendor formats the standalone proxy uses, and writes the new token file back into the user's Secret (a
compare-and-swap on its resourceVersion). That Secret's change re-renders the gateway's, which the proxies
watch. The credential's status reports the expiry and the last refresh, never a token.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cliproxy_proxy.oauth.base import RefreshRejected, RefreshRequest, TokenError, TokenSet
from cliproxy_proxy.oauth.session import refresh_once
from cliproxy_proxy.oauth.vendors import token_format

#: Seconds between checks of each token, and how long before expiry a refresh is due (env: tests, tuning).
CHECK_SECONDS = float(os.environ.get("CLIPROXY_TOKEN_CHECK_SECONDS", "30"))
REFRESH_MARGIN = float(os.environ.get("CLIPROXY_TOKEN_REFRESH_MARGIN_SECONDS", "300"))


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _post(request: RefreshRequest) -> tuple[int, bytes]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(request.url, data=request.body, headers=dict(request.headers)) as response,
    ):
        return response.status, await response.read()


def _read(core: client.CoreV1Api, namespace: str, name: str, key: str) -> tuple[bytes, str] | None:
    """The token file in the Secret's key and the Secret's resourceVersion; None when either is missing."""
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    value = (secret.data or {}).get(key)
    if value is None or secret.metadata is None:
        return None
    return base64.b64decode(value), str(secret.metadata.resource_version)


def _write(core: client.CoreV1Api, namespace: str, name: str, key: str, raw: bytes, version: str) -> None:
    """Replace the key, failing (409) if anyone changed the Secret since it was read: never lose their write."""
    secret = core.read_namespaced_secret(name, namespace)
    if secret.metadata is None or secret.metadata.resource_version != version:
        raise ApiException(status=409, reason="the Secret changed while its token was refreshed")
    secret.data = {**(secret.data or {}), key: base64.b64encode(raw).decode()}
    core.replace_namespaced_secret(name, namespace, secret)


async def check(core: client.CoreV1Api, namespace: str, spec: Mapping[str, Any], now: float | None = None,
                margin: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Refresh the credential's token when due; returns its ``status.token`` report."""
    now = time.time() if now is None else now
    margin = REFRESH_MARGIN if margin is None else margin
    ref = spec["tokenSecretRef"]
    found = await asyncio.to_thread(_read, core, namespace, ref["name"], ref["key"])
    if found is None:
        return {"state": "failing", "message": f"Secret {ref['name']!r} has no key {ref['key']!r}"}
    raw, version = found
    fmt = token_format(spec["provider"], spec.get("refreshURL"))
    try:
        tokens = fmt.parse(raw)
    except TokenError as error:
        return {"state": "failing", "message": str(error)}
    if tokens.expires_at is None:
        return {"state": "static"}
    if tokens.expires_at - now > margin:
        return {"state": "valid", "expiresAt": _stamp(tokens.expires_at)}
    try:
        fresh = await refresh_once(fmt, tokens, _post)
    except RefreshRejected as error:
        return _failed("rejected", error, tokens)
    except (TokenError, aiohttp.ClientError, TimeoutError) as error:
        return _failed("failing", error, tokens)
    await asyncio.to_thread(_write, core, namespace, ref["name"], ref["key"], fmt.dump(fresh, raw), version)
    report = {"state": "refreshed", "lastRefresh": _stamp(now)}
    if fresh.expires_at is not None:
        report["expiresAt"] = _stamp(fresh.expires_at)
    return report


def _failed(state: str, error: BaseException, tokens: TokenSet) -> dict[str, Any]:
    message = str(error) or type(error).__name__
    for secret in (tokens.access_token, tokens.refresh_token):
        if secret:
            message = message.replace(secret, "***")
    report = {"state": state, "message": message[:1024]}
    if tokens.expires_at is not None:
        report["expiresAt"] = _stamp(tokens.expires_at)
    return report
