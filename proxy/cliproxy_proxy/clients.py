"""Client identities: which configured key a caller presented, and what that key may do.

Keys are resolved once per request against a table built once per config snapshot; every key is compared
whatever matched, so neither a match nor its position shows in timing.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field
from fnmatch import translate

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from .config import Budget, ClientKey, ClientRateLimit


@dataclass(frozen=True, slots=True)
class Client:
    """A named key's rules, as a snapshot holds them; ``name`` is the only thing about it that is ever shown."""

    name: str
    models: re.Pattern[str] = field(repr=False)
    unrestricted: bool
    rate_limit: ClientRateLimit | None
    budget: Budget | None
    expires_at: float | None  # Unix time; None: never

    def allows(self, model: str) -> bool:
        return self.unrestricted or self.models.fullmatch(model.lower()) is not None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    @property
    def limited(self) -> bool:
        return self.rate_limit is not None or self.budget is not None


def client_of(entry: ClientKey) -> Client:
    """The snapshot's view of one ``client-keys`` entry: its globs compiled into one case-insensitive pattern."""
    globs = tuple(g.lower() for g in entry.models)
    pattern = re.compile("|".join(f"(?:{translate(g)})" for g in globs) or "(?!)")
    return Client(
        name=entry.name, models=pattern, unrestricted="*" in globs, rate_limit=entry.rate_limit,
        budget=entry.budget, expires_at=entry.expires.timestamp() if entry.expires is not None else None,
    )  # fmt: skip


def key_index(presented: bytes, keys: tuple[bytes, ...]) -> int:
    """Which of ``keys`` was presented (-1: none); constant-time over every key, so the position does not show."""
    found = -1
    for index, key in enumerate(keys):
        hit = hmac.compare_digest(presented, key)
        found = index if hit else found
    return found


class ClientUsage:
    """Per-client requests and tokens in Prometheus, labelled by client name (a key never becomes a label)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "cliproxy_client_requests", "Requests of named client keys, by client and status",
            ["client", "status"], registry=registry,
        )  # fmt: skip
        self.tokens = Counter(
            "cliproxy_client_tokens", "Tokens used by named client keys, by client and direction",
            ["client", "direction"], registry=registry,
        )  # fmt: skip

    def record(self, client: Client, status: int, tokens: tuple[int, int] | None) -> None:
        self.requests.labels(client.name, str(status)).inc()
        if tokens:
            self.tokens.labels(client.name, "input").inc(tokens[0])
            self.tokens.labels(client.name, "output").inc(tokens[1])


#: The named client key a request presented (client-keys); absent for a plain api-keys key.
CLIENT = web.RequestKey("client", Client)
