"""Prometheus series and the ``/v1/metrics/providers`` summary, fed from one place per request.

Labels are bounded by the config: provider names and exposed model ids, never client-supplied strings
that did not resolve, never anything secret.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
UNRESOLVED = "none"


@dataclass(slots=True)
class ProviderStats:
    """Rolling figures for one provider; latencies keep the last ``window`` requests."""

    requests: int = 0
    successes: int = 0
    failures: int = 0
    tokens: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2048))

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)

        def pct(q: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

        return {
            "request_count": self.requests,
            "success_count": self.successes,
            "failure_count": self.failures,
            "total_tokens": self.tokens,
            "success_rate": round(self.successes / self.requests, 4) if self.requests else 0.0,
            "latency_p50_ms": pct(0.5),
            "latency_p95_ms": pct(0.95),
        }


class _CredentialStates(Collector):
    def __init__(self, states: Callable[[], dict[str, tuple[int, int]]]) -> None:
        self.states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "cliproxy_credentials", "Credentials per provider by state", labels=["provider", "state"]
        )
        for provider, (healthy, cooling) in sorted(self.states().items()):
            family.add_metric([provider, "healthy"], healthy)
            family.add_metric([provider, "cooling"], cooling)
        yield family


class _Undiscovered(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "cliproxy_model_discovery_pending",
            "Credentials whose model list could not be fetched yet (they serve no model; retried with backoff)",
            labels=["provider"],
        )
        for provider, count in sorted(self.counts().items()):
            family.add_metric([provider], count)
        yield family


SessionRow = tuple[str, str, str, float | None, int]  # provider, credential label, state, expires_at, refreshes


class _SessionStates(Collector):
    """OAuth / session tokens: state, seconds to expiry and refreshes, per credential (labels never hold tokens)."""

    def __init__(self, rows: Callable[[], list[SessionRow]]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["provider", "credential"]
        state = GaugeMetricFamily("cliproxy_oauth_session_state", "1 for the session's current state",
                                  labels=[*labels, "state"])  # fmt: skip
        expiry = GaugeMetricFamily("cliproxy_oauth_token_expiry_seconds", "Seconds until the access token expires",
                                   labels=labels)  # fmt: skip
        refreshes = CounterMetricFamily("cliproxy_oauth_refreshes", "Successful token refreshes", labels=labels)
        now = time.time()
        for provider, label, current, expires_at, count in self.rows():
            state.add_metric([provider, label, current], 1)
            if expires_at is not None:
                expiry.add_metric([provider, label], expires_at - now)
            refreshes.add_metric([provider, label], count)
        yield from (state, expiry, refreshes)


class Metrics:
    """Every series the proxy exports, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cliproxy_requests",
            "Client requests by provider, model and HTTP status",
            ["provider", "model", "status"],
            registry=r,
        )
        self.errors = Counter(
            "cliproxy_errors",
            "Failed upstream attempts and client errors by type",
            ["provider", "error_type"],
            registry=r,
        )
        self.tokens = Counter(
            "cliproxy_tokens",
            "Tokens by provider, model and type (input, output)",
            ["provider", "model", "type"],
            registry=r,
        )
        self.duration = Histogram(
            "cliproxy_request_duration_seconds",
            "Client request duration, streams until their last byte",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "cliproxy_time_to_first_token_seconds",
            "Time from request to the first streamed upstream byte",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "cliproxy_proxy_overhead_seconds",
            "Time spent in the proxy outside upstream calls",
            ["provider"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "cliproxy_in_flight_requests", "Requests in flight per provider", ["provider"], registry=r
        )
        self.cooldowns = Counter(
            "cliproxy_credential_cooldowns",
            "Cooldowns started, by provider and reason",
            ["provider", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "cliproxy_fallbacks", "Requests handed to a fallback model, by the model that failed, its fallback and why",
            ["from_model", "to_model", "reason"], registry=r,
        )  # fmt: skip
        self.selections = Counter(
            "cliproxy_credential_selections", "Attempts sent through each credential (weighted round-robin's shares)",
            ["provider", "credential"], registry=r,
        )  # fmt: skip
        self.discoveries = Counter(
            "cliproxy_model_discovery", "Model list fetches (/models) by provider and result", ["provider", "result"],
            registry=r,
        )  # fmt: skip
        self.reloads = Counter("cliproxy_config_reloads", "Config reloads by result", ["result"], registry=r)
        self.generation = Gauge("cliproxy_config_generation", "Generation of the config in force", registry=r)
        self.last_reload = Gauge(
            "cliproxy_config_last_reload_success_timestamp_seconds", "When the config in force was loaded",
            registry=r,
        )  # fmt: skip
        self.providers: dict[str, _Provider] = {}
        self._models: dict[tuple[str, str], _Model] = {}

    def watch_credentials(self, states: Callable[[], dict[str, tuple[int, int]]],
                          sessions: Callable[[], list[SessionRow]],
                          undiscovered: Callable[[], dict[str, int]]) -> None:  # fmt: skip
        self.registry.register(_CredentialStates(states))
        self.registry.register(_SessionStates(sessions))
        self.registry.register(_Undiscovered(undiscovered))

    def discovered(self, provider: str, ok: bool) -> None:
        self.discoveries.labels(provider, "success" if ok else "failure").inc()

    def provider(self, name: str) -> _Provider:
        """The provider's resolved series: ``labels()`` takes a lock and a lookup, so it runs once per name."""
        found = self.providers.get(name)
        if found is None:
            found = self.providers[name] = _Provider(
                self.duration.labels(name), self.ttft.labels(name), self.overhead.labels(name),
                self.in_flight.labels(name),
            )  # fmt: skip
        return found

    def _model(self, provider: str, model: str) -> _Model:
        found = self._models.get((provider, model))
        if found is None:
            tokens_in, tokens_out = (
                self.tokens.labels(provider, model, "input"),
                self.tokens.labels(provider, model, "output"),
            )
            found = self._models[(provider, model)] = _Model(tokens_in, tokens_out)
        return found

    def summary(self, provider: str) -> dict[str, Any]:
        series = self.providers.get(provider)
        if series is None:
            return {**ProviderStats().summary(), "in_flight": 0}
        return {**series.stats.summary(), "in_flight": series.in_flight_now}

    def finish(
        self, provider: str, model: str, status: int, seconds: float, tokens_in: int = 0, tokens_out: int = 0
    ) -> None:
        """Record one client request's outcome everywhere it is counted."""
        series = self._model(provider, model)
        counter = series.by_status.get(status)
        if counter is None:
            counter = series.by_status[status] = self.requests.labels(provider, model, str(status))
        counter.inc()
        if provider == UNRESOLVED:
            return
        if tokens_in:
            series.tokens_in.inc(tokens_in)
        if tokens_out:
            series.tokens_out.inc(tokens_out)
        owner = self.provider(provider)
        owner.duration.observe(seconds)
        stats = owner.stats
        stats.requests += 1
        if status < 400:
            stats.successes += 1
        else:
            stats.failures += 1
        stats.tokens += tokens_in + tokens_out
        stats.latencies_ms.append(seconds * 1000.0)


class _Provider:
    __slots__ = ("duration", "in_flight", "in_flight_now", "overhead", "stats", "ttft")

    def __init__(self, duration: Any, ttft: Any, overhead: Any, in_flight: Any) -> None:
        self.duration, self.ttft, self.overhead, self.in_flight = duration, ttft, overhead, in_flight
        self.in_flight_now = 0
        self.stats = ProviderStats()

    def enter(self) -> None:
        self.in_flight.inc()
        self.in_flight_now += 1

    def leave(self) -> None:
        self.in_flight.dec()
        self.in_flight_now -= 1


class _Model:
    __slots__ = ("by_status", "tokens_in", "tokens_out")

    def __init__(self, tokens_in: Any, tokens_out: Any) -> None:
        self.tokens_in, self.tokens_out = tokens_in, tokens_out
        self.by_status: dict[int, Any] = {}
