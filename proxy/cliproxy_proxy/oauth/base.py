"""The contract between a vendor's token format and the code that keeps its tokens fresh.

A :class:`TokenFormat` knows one vendor: how its own tool writes the token file, and how to ask for a new
access token. It does no I/O, so the standalone proxy (writing the file back) and the operator (writing a
Secret) share it unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class TokenError(ValueError):
    """A token file or refresh answer that cannot be used; the message never carries a token."""


class RefreshRejected(TokenError):
    """The vendor refused the refresh token (revoked or expired): only a new login helps."""


@dataclass(frozen=True, slots=True)
class TokenSet:
    """What one vendor session holds. ``extra`` keeps vendor fields (region, profile ARN) a request needs."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None  # epoch seconds; None when the vendor does not say
    extra: Mapping[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> TokenSet:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    """One HTTP POST that exchanges a refresh token for new tokens."""

    url: str
    headers: Mapping[str, str]
    body: bytes = field(repr=False)


class TokenFormat(Protocol):
    """One vendor's token file and refresh exchange."""

    name: str

    def parse(self, raw: bytes) -> TokenSet:
        """The tokens in a file written by the vendor's own tool (or by :meth:`dump`)."""
        ...

    def dump(self, tokens: TokenSet, previous: bytes | None) -> bytes:
        """The file the vendor's tool would write, keeping the fields of ``previous`` this format does not own."""
        ...

    def refresh_request(self, tokens: TokenSet) -> RefreshRequest | None:
        """The refresh call, or None when these tokens cannot be refreshed (a static key)."""
        ...

    def parse_refresh(self, tokens: TokenSet, status: int, body: bytes) -> TokenSet:
        """The new tokens from the refresh answer; raises RefreshRejected or TokenError."""
        ...


#: Sends one refresh call and answers its status and body: the proxy's pool, or the operator's own client.
Post = Callable[[RefreshRequest], Awaitable[tuple[int, bytes]]]


async def refresh_once(fmt: TokenFormat, tokens: TokenSet, post: Post) -> TokenSet:
    """One refresh exchange, no state: the Session and the operator both use it."""
    request = fmt.refresh_request(tokens)
    if request is None:
        raise TokenError(f"{fmt.name}: these tokens cannot be refreshed")
    status, body = await post(request)
    return fmt.parse_refresh(tokens, status, body)
