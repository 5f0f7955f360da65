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

from cliproxy_proxy.contract import (
    RefreshRejected,
    RefreshRequest,
    TokenError,
    TokenSet,
    refresh_once,
    registration_name,
    token_format,
)

from .secret_rules import OPT_IN_LABEL, REFRESH_URL_ANNOTATION, opted_in, refresh_url_refusal

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


def _secret(core: client.CoreV1Api, namespace: str, name: str) -> Any:
    try:
        return core.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _refusal(secret: Any, spec: Mapping[str, Any]) -> str | None:
    """Why this Secret's owner has not allowed the refresh the credential asks for (see secret_rules)."""
    metadata = secret.metadata
    if not opted_in(metadata.labels if metadata else None):
        return f"Secret {spec['tokenSecretRef']['name']!r} lacks the label {OPT_IN_LABEL}=true; not refreshed"
    allowed = ((metadata.annotations if metadata else None) or {}).get(REFRESH_URL_ANNOTATION)
    return refresh_url_refusal(spec["provider"], spec.get("refreshURL"), allowed)


def _write(core: client.CoreV1Api, namespace: str, name: str, key: str, fresh: bytes, read: bytes) -> bool:
    """Put the refreshed file in the key unless someone replaced the token meanwhile (a newer login stands).

    The vendor has already spent the old refresh token, so a conflict on another key is retried, never dropped;
    each replace carries the resourceVersion it read, a compare-and-swap.
    """
    for _ in range(5):
        secret = core.read_namespaced_secret(name, namespace)
        current = (secret.data or {}).get(key)
        if current is None or base64.b64decode(current) != read:
            return False
        secret.data = {**(secret.data or {}), key: base64.b64encode(fresh).decode()}
        try:
            core.replace_namespaced_secret(name, namespace, secret)
            return True
        except ApiException as error:
            if error.status != 409:
                raise
    raise ApiException(status=409, reason="the Secret kept changing while the refreshed token was written")


async def check(core: client.CoreV1Api, namespace: str, spec: Mapping[str, Any], now: float | None = None,
                margin: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Refresh the credential's token when due; returns its ``status.token`` report."""
    now = time.time() if now is None else now
    margin = REFRESH_MARGIN if margin is None else margin
    ref = spec["tokenSecretRef"]
    try:
        return await _check(core, namespace, spec, ref, now, margin)
    except ApiException as error:  # its body may echo the Secret: report the status line only
        return {"state": "failing", "message": f"Kubernetes API: HTTP {error.status} {error.reason}"}


async def _check(core: client.CoreV1Api, namespace: str, spec: Mapping[str, Any], ref: Mapping[str, str],
                 now: float, margin: float) -> dict[str, Any]:  # fmt: skip
    secret = await asyncio.to_thread(_secret, core, namespace, ref["name"])
    found = None if secret is None else (secret.data or {}).get(ref["key"])
    if found is None:
        return {"state": "failing", "message": f"Secret {ref['name']!r} has no key {ref['key']!r}"}
    refusal = _refusal(secret, spec)
    if refusal is not None:  # the victim's refresh token goes nowhere its owner did not allow
        return {"state": "failing", "message": refusal}
    raw = base64.b64decode(found)
    registration = None
    if spec["provider"] == "kiro" and (name := registration_name(raw)) is not None:
        # An IdC login: its client registration rides in the same Secret, under the name the IDE gives it.
        stored = (secret.data or {}).get(name)
        registration = None if stored is None else base64.b64decode(stored)
    fmt = token_format(spec["provider"], spec.get("refreshURL"), registration)
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
    if not await asyncio.to_thread(_write, core, namespace, ref["name"], ref["key"], fmt.dump(fresh, raw), raw):
        return {"state": "valid", "message": "the token in the Secret was replaced during the refresh; it stands"}
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
