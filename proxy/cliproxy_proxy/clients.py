"""Client identities: which configured key a caller presented, and what that key may do.

Keys are resolved once per request against a table built once per config snapshot; every key is compared
whatever matched, so neither a match nor its position shows in timing.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field
from fnmatch import translate
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from .config import Budget, ClientKey, ClientRateLimit
from .translate.canonical import Usage


@dataclass(frozen=True, slots=True)
class Client:
    """A named key's rules, as a snapshot holds them; ``name`` is the only thing about it that is ever shown."""

    name: str
    models: re.Pattern[str] = field(repr=False)
    unrestricted: bool
    rate_limit: ClientRateLimit | None
    budget: Budget | None
    expires_at: float | None  # Unix time; None: never
    plain: bool = False  # an ``api-keys`` key, not a ``client-keys`` entry

    def allows(self, model: str) -> bool:
        return self.unrestricted or self.models.fullmatch(model.lower()) is not None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    @property
    def limited(self) -> bool:
        return self.rate_limit is not None or self.budget is not None


def plain_client(label: str) -> Client:
    """A plain ``api-keys`` key: every model, no limits, shown by its place in the config (never by the key)."""
    return Client(name=label, models=re.compile(".*"), unrestricted=True, rate_limit=None, budget=None,
                  expires_at=None, plain=True)  # fmt: skip


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


@dataclass(slots=True)
class ClientTotals:
    """One client's figures in this replica since it started, for ``/v1/metrics/clients``."""

    requests: int = 0
    input: int = 0
    output: int = 0
    cached: int = 0
    cost_usd: float = 0.0
    count_requests: int = 0  # token-counting requests, apart: they generate nothing and cost nothing


@dataclass(slots=True)
class _Series:
    """One client's resolved Prometheus children (``labels()`` takes a lock and a lookup: once per name)."""

    input: Any
    output: Any
    cached: Any
    cost: Any
    by_status: dict[int, Any] = field(default_factory=dict)
    counts_by_status: dict[int, Any] = field(default_factory=dict)
    totals: ClientTotals = field(default_factory=ClientTotals)


class ClientUsage:
    """Per-client requests, tokens and cost in Prometheus, labelled by client name (a key never becomes a label)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "cliproxy_client_requests", "Requests of client keys, by client and status",
            ["client", "status"], registry=registry,
        )  # fmt: skip
        self.tokens = Counter(
            "cliproxy_client_tokens", "Tokens used by client keys, by client and direction (input, output, cached)",
            ["client", "direction"], registry=registry,
        )  # fmt: skip
        self.cost = Counter(
            "cliproxy_client_cost_usd", "US dollars spent by client keys (genai-prices' table or the config's pricing)",
            ["client"], registry=registry,
        )  # fmt: skip
        self.count_requests = Counter(
            "cliproxy_client_count_tokens_requests",
            "Token-counting requests of client keys (Anthropic's count_tokens, Gemini's countTokens), by client and "
            "status; outside cliproxy_client_requests, rpm, tpm and budgets",
            ["client", "status"], registry=registry,
        )  # fmt: skip
        self.series: dict[str, _Series] = {}

    def totals(self, name: str) -> ClientTotals:
        series = self.series.get(name)
        return series.totals if series is not None else ClientTotals()

    def _series(self, name: str) -> _Series:
        series = self.series.get(name)
        if series is None:
            series = self.series[name] = _Series(
                self.tokens.labels(name, "input"), self.tokens.labels(name, "output"),
                self.tokens.labels(name, "cached"), self.cost.labels(name),
            )  # fmt: skip
        return series

    def record_count(self, client: Client, status: int) -> None:
        """A token-counting request: counted apart, never as a request that used tokens or money."""
        series = self._series(client.name)
        counter = series.counts_by_status.get(status)
        if counter is None:
            counter = series.counts_by_status[status] = self.count_requests.labels(client.name, str(status))
        counter.inc()
        series.totals.count_requests += 1

    def record(self, client: Client, status: int, usage: Usage | None, cost: float = 0.0) -> None:
        name = client.name
        series = self._series(name)
        counter = series.by_status.get(status)
        if counter is None:
            counter = series.by_status[status] = self.requests.labels(name, str(status))
        counter.inc()
        totals = series.totals
        totals.requests += 1
        if usage is not None:
            series.input.inc(usage.input)
            series.output.inc(usage.output)
            series.cached.inc(usage.cached)
            totals.input += usage.input
            totals.output += usage.output
            totals.cached += usage.cached
        if cost:
            series.cost.inc(cost)
            totals.cost_usd += cost


#: The client key a request presented: a ``client-keys`` entry, or a plain ``api-keys`` key named by its place.
CLIENT = web.RequestKey("client", Client)
