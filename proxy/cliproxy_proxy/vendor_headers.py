"""Vendor headers: what a client's SDK sends beside the body (betas, API versions) and what the upstream answers
beside it (its request id, its rate limits).

A same-format request carries its client's vendor headers to the upstream (Claude Code's ``anthropic-beta`` unlocks
the body fields it sends); a translated one cannot, the headers mean nothing to another vendor. Credentials and
billing identity are never taken from the client: the proxy's own key is what the upstream sees.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDictProxy

#: Client headers that match a wire's prefixes but carry a credential or name the caller's own account
#: (x-goog-api-key, x-goog-iam-authorization-token, x-goog-user-project, openai-organization...): never forwarded.
ACCOUNT_WORDS = ("key", "auth", "token", "project", "organization", "cookie")
#: Upstream response headers a client reads: request ids for support tickets, rate limits to pace itself.
PASSED_BACK = ("request-id", "x-request-id")
PASSED_BACK_PREFIXES = ("anthropic-ratelimit-", "x-ratelimit-")


def _safe(value: str) -> bool:
    """Whether a value can go into a request head verbatim (no line breaks, latin-1 as HTTP/1.1 requires)."""
    return value.isprintable() and value.isascii()


def forwarded(headers: CIMultiDictProxy[str], prefixes: tuple[str, ...]) -> dict[str, str]:
    """The client's vendor headers for this wire, by lower-case name; repeated ones joined as HTTP allows."""
    if not prefixes:
        return {}
    found: dict[str, str] = {}
    for name in headers:
        lower = name.lower()
        if lower.startswith(prefixes) and lower not in found and not any(word in lower for word in ACCOUNT_WORDS):
            value = ", ".join(headers.getall(name))
            if _safe(value):
                found[lower] = value
    return found


def passed_back(upstream: Mapping[str, str]) -> dict[str, str]:
    """The upstream's request id and rate-limit headers (``upstream`` names are lower case)."""
    return {
        name: value
        for name, value in upstream.items()
        if (name in PASSED_BACK or name.startswith(PASSED_BACK_PREFIXES)) and _safe(value)
    }
