"""Where one finished request is counted, once: what it cost, its client's budget and series, the request log and
its trace span. Nothing here waits: budgets settle in the background, log lines go to a writer thread.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from .clients import Client, ClientUsage
from .config import ProxyConfig
from .counters import period
from .limits import MICRO, Limits, Verdict
from .pricing import Prices
from .requestlog import RequestLog, request_id
from .runtime import Credential, Route, Target
from .tracing import Tracing, finish, from_environment, provider_name
from .translate.canonical import Usage

if TYPE_CHECKING:
    from opentelemetry.trace import Span


class Exchange(Protocol):
    """What is counted of a finished exchange (``forward.Exchange``, which imports this module through the state)."""

    operation: str
    route: Route
    usage: Usage | None
    target: Target | None
    credential: Credential | None
    ttft: float | None
    attempts: int


class Accounting:
    """The proxy's prices, request log and tracer, and the one place a request's outcome is recorded."""

    def __init__(self, registry: CollectorRegistry, limits: Limits, clients: ClientUsage) -> None:
        self.limits = limits
        self.clients = clients
        self.prices = Prices({})
        self.request_log = RequestLog(registry)
        self.tracing: Tracing | None = from_environment()
        self.unpriced = Counter(
            "cliproxy_unpriced_requests", "Answers whose model has no known price (counted at cost 0)",
            ["provider", "model"], registry=registry,
        )  # fmt: skip

    def configure(self, config: ProxyConfig) -> None:
        if config.pricing != self.prices.overrides:
            self.prices = Prices(config.pricing)
        self.request_log.configure(config.request_log)

    def server_span(self, operation: str, request: web.Request) -> Span | None:
        return self.tracing.server(operation, request.headers) if self.tracing is not None else None

    def cost(self, exchange: Exchange) -> float:
        """The answer's cost in US dollars; 0 for an unpriced model (counted) or an answer without usage."""
        usage, target = exchange.usage, exchange.target
        if usage is None or target is None or not usage.total:
            return 0.0
        rates = self.prices.rates(target.credential.base_url, target.upstream_model, exchange.route.model)
        if rates is None:
            self.unpriced.labels(target.credential.provider, exchange.route.model).inc()
            return 0.0
        return rates.cost(usage)

    def record(
        self, request: web.Request, client: Client | None, status: int, started: float, *,
        exchange: Exchange | None = None, verdict: Verdict | None = None, span: Span | None = None,
    ) -> None:  # fmt: skip
        """Count a finished request (``exchange`` None: refused before any upstream was asked)."""
        usage = exchange.usage if exchange is not None else None
        cost = self.cost(exchange) if exchange is not None else 0.0
        if client is not None:
            if verdict is not None and verdict.allowed and not client.plain:  # admitted (or never limited)
                self.limits.settle(client, verdict, usage.total if usage else 0, round(cost * MICRO))
            self.clients.record(client, status, usage, cost)
        if span is not None:
            self._close_span(span, exchange, status, client)
        if self.request_log.enabled:
            self.request_log.write(self._line(request, client, status, started, exchange, cost, span))

    def _close_span(self, span: Span, exchange: Exchange | None, status: int, client: Client | None) -> None:
        if exchange is not None:
            span.update_name(f"{exchange.operation} {exchange.route.model}")
            span.set_attribute("gen_ai.request.model", exchange.route.model)
            if exchange.credential is not None:
                credential = exchange.credential
                span.set_attribute("gen_ai.provider.name", provider_name(credential.provider, credential.wire))
        if client is not None:
            span.set_attribute("cliproxy.client", client.name)
        model = exchange.route.model if exchange is not None and exchange.usage is not None else None
        finish(span, status, exchange.usage if exchange is not None else None, model)

    @staticmethod
    def _line(
        request: web.Request, client: Client | None, status: int, started: float, exchange: Exchange | None,
        cost: float, span: Span | None,
    ) -> dict[str, Any]:  # fmt: skip
        """The request's log line: names, counts and times; never a key, a header or a body."""
        usage = exchange.usage if exchange is not None else None
        credential = exchange.credential if exchange is not None else None
        line: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "request_id": request_id(request.headers.get("X-Request-Id")),
            "client": client.name if client is not None else None,
            "model": exchange.route.model if exchange is not None else None,
            "provider": credential.provider if credential is not None else None,
            "credential": credential.id[:12] if credential is not None else None,  # a hash: never the key
            "status": status,
            "input_tokens": usage.input if usage else 0,
            "output_tokens": usage.output if usage else 0,
            "cached_tokens": usage.cached if usage else 0,
            "cost_usd": round(cost, 9),
            "latency_ms": round((perf_counter() - started) * 1000, 3),
            "ttft_ms": round(exchange.ttft * 1000, 3) if exchange is not None and exchange.ttft is not None else None,
            "retries": max(0, exchange.attempts - 1) if exchange is not None else 0,
        }
        if span is not None:
            line["trace_id"] = format(span.get_span_context().trace_id, "032x")
        return line

    async def report(self, clients: list[Client]) -> dict[str, Any]:
        """``/v1/metrics/clients``: each client's totals in this replica, and its budget's spend this period (on
        Redis, every replica's; ``null`` while Redis cannot say)."""
        spends = await asyncio.gather(*(self.limits.spent(client) for client in clients))
        body: dict[str, Any] = {}
        for client, spent in zip(clients, spends, strict=True):
            totals = self.clients.totals(client.name)
            entry: dict[str, Any] = {
                "request_count": totals.requests, "input_tokens": totals.input, "output_tokens": totals.output,
                "cached_tokens": totals.cached, "cost_usd": round(totals.cost_usd, 6),
                "count_tokens_requests": totals.count_requests,
            }  # fmt: skip
            if client.budget is not None:
                budget = client.budget
                entry["budget"] = {
                    "per": budget.per, "period": period(budget, time.time())[0], "tokens": budget.tokens,
                    "usd": budget.usd, "spent_tokens": spent[0] if spent else None,
                    "spent_usd": round(spent[1] / MICRO, 6) if spent else None,
                }  # fmt: skip
            body[client.name] = entry
        return body

    async def close(self) -> None:
        await self.request_log.drain()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # flushes the spans still queued
