"""OpenTelemetry traces, on only when the standard ``OTEL_*`` variables ask for them (off, a request pays nothing).

Spans follow the GenAI semantic conventions: one server span per client request, named ``{operation} {model}``,
continuing the caller's W3C ``traceparent``; one client span per upstream attempt, whose ``traceparent`` the
upstream receives. Spans are exported in batches by the SDK's own thread, never on the event loop.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .catalog import Wire
from .translate.canonical import Usage

PROPAGATOR = TraceContextTextMapPropagator()

#: ``gen_ai.provider.name`` of the config's blocks and wires, as the semantic conventions spell them.
_PROVIDER_NAMES = {"deepseek": "deepseek", "groq": "groq", "mistral": "mistral_ai", "codex-api-key": "openai"}
_WIRE_NAMES = {Wire.ANTHROPIC: "anthropic", Wire.GEMINI: "gcp.gemini", Wire.VERTEX: "gcp.vertex_ai",
               Wire.OPENAI_CHAT: "openai", Wire.RESPONSES: "openai"}  # fmt: skip


def provider_name(provider: str, wire: Wire) -> str:
    return _PROVIDER_NAMES.get(provider) or _WIRE_NAMES.get(wire) or provider


def from_environment(environ: Mapping[str, str] = os.environ) -> Tracing | None:
    """Tracing as ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console`` or ``none``) and the OTLP endpoint say; else None."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter_name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if exporter_name == "none" or not (exporter_name or endpoint):
        return None
    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:  # otlp, the default; the exporter reads its endpoint, headers and timeout from OTEL_EXPORTER_OTLP_*
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "cliproxy"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider)


class Tracing:
    """The proxy's tracer and its provider (whose processors export, and are flushed at shutdown)."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("cliproxy")

    def server(self, operation: str, headers: Mapping[str, str]) -> Span:
        """The span of one client request, continuing the caller's trace when it sent a ``traceparent``."""
        return self.tracer.start_span(
            operation, context=PROPAGATOR.extract(headers), kind=SpanKind.SERVER,
            attributes={"gen_ai.operation.name": operation},
        )  # fmt: skip

    def upstream(self, parent: Span, operation: str, provider: str, model: str) -> tuple[Span, dict[str, str]]:
        """The span of one upstream attempt, and the ``traceparent`` header that carries it to the upstream."""
        span = self.tracer.start_span(
            f"{operation} {model}", context=set_span_in_context(parent), kind=SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": operation, "gen_ai.provider.name": provider,
                        "gen_ai.request.model": model},
        )  # fmt: skip
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier, context=set_span_in_context(span))
        return span, carrier

    def shutdown(self) -> None:
        self.provider.shutdown()


def finish(span: Span, status: int, usage: Usage | None, response_model: str | None, error: str = "") -> None:
    """Close a span with the outcome: the usage, the model that answered, and the error type of a failure."""
    if response_model:
        span.set_attribute("gen_ai.response.model", response_model)
    if usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", usage.input)
        span.set_attribute("gen_ai.usage.output_tokens", usage.output)
        if usage.cached:
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cached)
    if status:
        span.set_attribute("http.response.status_code", status)
    if status >= 400 or error:
        span.set_attribute("error.type", error or str(status))
        span.set_status(Status(StatusCode.ERROR))
    span.end()
