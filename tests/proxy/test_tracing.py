"""OpenTelemetry traces: GenAI spans in the SDK's in-memory exporter, traceparent both ways, and one export through a
real OTLP/HTTP receiver decoding the protobuf request."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import anthropic
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from cliproxy_proxy.tracing import Tracing, from_environment

from ..fakes.anthropic_upstream import DEFAULT_KEY as ANTHROPIC_KEY
from ..fakes.anthropic_upstream import AnthropicUpstream, start_anthropic
from ..support.proxy import CLIENT_KEY, RunningProxy, base_config

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{CALLER_TRACE}-b7ad6b7169203331-01"


async def _gateway(aiohttp_server, start_proxy) -> tuple[AnthropicUpstream, RunningProxy]:  # type: ignore[no-untyped-def]
    claude, url = await start_anthropic(aiohttp_server)
    models = [{"name": "claude-sonnet-4-6", "alias": "sonnet"}]
    config = base_config(**{"claude-api-key": [{"api-key": ANTHROPIC_KEY, "base-url": url, "models": models}]})
    return claude, await start_proxy(config)


async def _ask(running: RunningProxy, **options: Any) -> None:
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=CLIENT_KEY, max_retries=0, timeout=30.0)
    await client.messages.create(model="sonnet", max_tokens=10, messages=[{"role": "user", "content": "hi"}], **options)


def test_tracing_is_off_unless_the_otel_variables_ask_for_it() -> None:
    assert from_environment({}) is None
    assert from_environment({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}) is None
    assert from_environment({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}) is None
    console = from_environment({"OTEL_TRACES_EXPORTER": "console"})
    assert console is not None
    console.shutdown()


async def test_spans_follow_the_genai_conventions_and_traceparent_goes_both_ways(aiohttp_server, start_proxy) -> None:  # type: ignore[no-untyped-def]
    claude, running = await _gateway(aiohttp_server, start_proxy)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    running.proxy.accounting.tracing = Tracing(provider)

    await _ask(running, extra_headers={"traceparent": TRACEPARENT})
    server, client = (next(s for s in exporter.get_finished_spans() if s.kind is kind)
                      for kind in (SpanKind.SERVER, SpanKind.CLIENT))  # fmt: skip
    assert server.name == "chat sonnet" and client.name == "chat claude-sonnet-4-6"
    assert format(server.context.trace_id, "032x") == CALLER_TRACE  # the caller's trace, continued
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert server.attributes is not None and client.attributes is not None
    assert server.attributes["gen_ai.operation.name"] == "chat"
    assert server.attributes["gen_ai.provider.name"] == "anthropic"
    assert server.attributes["gen_ai.request.model"] == "sonnet"
    assert server.attributes["gen_ai.usage.input_tokens"] > 0  # type: ignore[operator]
    assert server.attributes["gen_ai.usage.output_tokens"] > 0  # type: ignore[operator]
    assert client.attributes["gen_ai.response.model"] == "claude-sonnet-4-6"
    sent = claude.received[-1].headers["traceparent"]  # the upstream continues the attempt's span
    assert sent == f"00-{CALLER_TRACE}-{client.context.span_id:016x}-01"


async def test_one_export_reaches_a_real_otlp_http_receiver(
    aiohttp_server, start_proxy, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    exports: list[ExportTraceServiceRequest] = []

    async def receive(request: web.Request) -> web.Response:
        assert request.headers["Content-Type"] == "application/x-protobuf"
        body = await request.read()
        exports.append(ExportTraceServiceRequest.FromString(
            gzip.decompress(body) if request.headers.get("Content-Encoding") == "gzip" else body))  # fmt: skip
        return web.Response(body=b"", content_type="application/x-protobuf")

    receiver = web.Application()
    receiver.router.add_post("/v1/traces", receive)
    collector = await aiohttp_server(receiver)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", str(collector.make_url("")).rstrip("/"))
    monkeypatch.setenv("OTEL_SERVICE_NAME", "cliproxy-test")
    tracing = from_environment()
    assert tracing is not None
    _, running = await _gateway(aiohttp_server, start_proxy)
    running.proxy.accounting.tracing = tracing

    await _ask(running)
    await asyncio.to_thread(tracing.provider.force_flush, 30_000)  # the exporter's thread posts to this loop
    spans = [(resource.resource, span) for export in exports for resource in export.resource_spans
             for scope in resource.scope_spans for span in scope.spans]  # fmt: skip
    assert sorted(span.name for _, span in spans) == ["chat claude-sonnet-4-6", "chat sonnet"]
    names = {attribute.value.string_value for resource, _ in spans for attribute in resource.attributes
             if attribute.key == "service.name"}  # fmt: skip
    assert names == {"cliproxy-test"}
    attributes = {a.key: a.value for _, span in spans if span.name == "chat sonnet" for a in span.attributes}
    assert attributes["gen_ai.provider.name"].string_value == "anthropic"
    await asyncio.to_thread(tracing.shutdown)
