"""AWS identities for upstream calls: botocore's credential chain and its SigV4 signer, kept off the event loop.

Credentials come from explicit keys or botocore's default chain (environment, shared profile and
``credential_process``, IRSA web identity, EKS Pod Identity and ECS container credentials, instance metadata).
Finding them and refreshing temporary ones may do network or file I/O, so both run in a thread: at load (the
reloader builds credentials in one) and whenever botocore says the keys near their expiry. Signing itself is
pure CPU over the final body.

botocore's own ``SigV4Auth.add_auth`` logs the canonical request at DEBUG, session token included; the signature
is computed here from its public steps instead, so no log level ever shows a key.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Mapping
from dataclasses import dataclass

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError
from botocore.session import Session

from .oauth.base import TokenError

#: The headers a signature adds to a request.
SIGNATURE_HEADERS = ("Authorization", "X-Amz-Date", "X-Amz-Security-Token")


@dataclass(frozen=True, slots=True)
class StaticKeys:
    """Keys given in the config (read from their files); never repr'd."""

    access_key: str
    secret_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return "StaticKeys(<redacted>)"


class AwsIdentity:
    """One credential's AWS identity: where its keys come from, and the keys in force.

    ``resolve`` (blocking) finds the keys; ``keys`` (async) hands out current ones, refreshing temporary keys in
    a thread when botocore says they near their expiry, one refresh at a time.
    """

    __slots__ = ("_frozen", "_lock", "_source", "profile", "region", "static")

    def __init__(self, region: str, *, profile: str | None = None, static: StaticKeys | None = None) -> None:
        self.region = region
        self.profile = profile
        self.static = static
        self._source: Credentials | None = None
        self._frozen: ReadOnlyCredentials | None = None
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"AwsIdentity(region={self.region!r}, profile={self.profile!r}, static={self.static is not None})"

    def resolve(self) -> None:
        """Find the keys (blocking: run it in a thread); raises TokenError naming what was looked at, never a key."""
        source: Credentials | None
        try:
            if self.static is not None:
                source = Credentials(self.static.access_key, self.static.secret_key, self.static.session_token)
            else:
                source = Session(profile=self.profile).get_credentials()
            if source is None:
                raise TokenError("no AWS credentials found (environment, shared profile, web identity, container "
                                 "or instance metadata)")  # fmt: skip
            frozen = source.get_frozen_credentials()
        except (BotoCoreError, ClientError) as error:
            raise TokenError(f"AWS credentials could not be resolved: {type(error).__name__}") from None
        self._source, self._frozen = source, frozen

    def _stale(self) -> bool:
        source = self._source
        if self._frozen is None or source is None:
            return True
        return isinstance(source, RefreshableCredentials) and source.refresh_needed()

    async def keys(self) -> ReadOnlyCredentials:
        """The keys in force; resolved or refreshed in a thread when missing or near their expiry."""
        if self._stale():
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._stale():
                    await asyncio.to_thread(self._refresh)
        assert self._frozen is not None
        return self._frozen

    def _refresh(self) -> None:
        if self._source is None:
            self.resolve()
            return
        try:
            self._frozen = self._source.get_frozen_credentials()
        except (BotoCoreError, ClientError) as error:
            raise TokenError(f"AWS credentials could not be refreshed: {type(error).__name__}") from None


def sigv4_headers(
    keys: ReadOnlyCredentials, service: str, region: str, method: str, url: str, headers: Mapping[str, str],
    body: bytes | bytearray, now: datetime.datetime | None = None,
) -> dict[str, str]:  # fmt: skip
    """The headers that sign this exact request (``Authorization``, ``X-Amz-Date``, the session token if any).

    ``url`` is the one the request goes to, its path percent-encoded as sent; ``headers`` are all signed.
    """
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=bytes(body))
    stamp = (now or datetime.datetime.now(datetime.UTC)).strftime(SIGV4_TIMESTAMP)
    request.context["timestamp"] = stamp
    request.headers["X-Amz-Date"] = stamp
    if keys.token:
        request.headers["X-Amz-Security-Token"] = keys.token
    signer = SigV4Auth(keys, service, region)
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    signed = signer.signed_headers(signer.headers_to_sign(request))
    added = {"X-Amz-Date": stamp,
             "Authorization": f"AWS4-HMAC-SHA256 Credential={signer.scope(request)}, SignedHeaders={signed}, "
                              f"Signature={signature}"}  # fmt: skip
    if keys.token:
        added["X-Amz-Security-Token"] = keys.token
    return added
