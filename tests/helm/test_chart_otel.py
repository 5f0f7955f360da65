"""The chart's ``otel`` values: the standard OTEL_* variables on the proxy, read by the proxy's SDK as rendered, the
exporter's headers from an existing Secret only."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

from cliproxy_proxy.tracing import from_environment

from .chart import NAMESPACE, OPERATOR, PROXY, objects, render
from .test_chart_redis import env_of, notes

OTEL = {
    "otel": {
        "enabled": True, "endpoint": "http://otel-collector.observability:4318", "serviceName": "gateway-a",
        "resourceAttributes": {"deployment.environment.name": "prod", "team": "platform ai"},
        "sampler": {"name": "parentbased_traceidratio", "arg": "0.25"}, "headers": {"existingSecret": "otel-auth"},
    }
}  # fmt: skip


def test_off_by_default_nothing_is_rendered() -> None:
    docs = objects(render({}))
    assert not [name for name in env_of(docs, PROXY, "proxy") if name.startswith("OTEL_")]
    assert "Traces:" not in notes({})


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: keeps each request's path, headers and decoded spans."""

    received: ClassVar[list[tuple[str, dict[str, str], ExportTraceServiceRequest]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, dict(self.headers), ExportTraceServiceRequest.FromString(body)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def test_the_proxy_exports_as_the_rendered_variables_say(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    values = {"otel": {**OTEL["otel"], "endpoint": endpoint}}
    docs = objects(render(values))
    env = env_of(docs, PROXY, "proxy")
    assert env["OTEL_EXPORTER_OTLP_HEADERS"] == {
        "name": "OTEL_EXPORTER_OTLP_HEADERS",
        "valueFrom": {"secretKeyRef": {"name": "otel-auth", "key": "headers"}},
    }
    assert env["OTEL_K8S_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert not [name for name in env_of(docs, OPERATOR, "operator") if name.startswith("OTEL_")]  # the proxy's only

    # What the kubelet hands the container: values as rendered, $(VAR) expanded, the headers from the Secret.
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    for name, entry in env.items():
        if "value" in entry:
            monkeypatch.setenv(name, entry["value"].replace("$(OTEL_K8S_POD_NAME)", "proxy-7d9f-x2"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cret,x-tenant=a")
    tracing = from_environment()
    assert tracing is not None
    sampler = tracing.provider.sampler
    assert isinstance(sampler, ParentBasedTraceIdRatio) and "0.25" in sampler.get_description()
    tracing.server("chat", {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}).end()  # sampled by its caller
    try:
        tracing.shutdown()  # flushes the batch
    finally:
        server.shutdown()
        server.server_close()
    [(path, headers, request)] = Receiver.received
    assert path == "/v1/traces" and headers["authorization"] == "Bearer s3cret" and headers["x-tenant"] == "a"
    resource = {a.key: a.value.string_value for a in request.resource_spans[0].resource.attributes}
    assert {key: resource.get(key) for key in (
        "service.name", "k8s.namespace.name", "k8s.pod.name", "k8s.deployment.name", "deployment.environment.name",
        "team")} == {
        "service.name": "gateway-a", "k8s.namespace.name": NAMESPACE, "k8s.pod.name": "proxy-7d9f-x2",
        "k8s.deployment.name": PROXY, "deployment.environment.name": "prod", "team": "platform ai"}  # fmt: skip
    text = notes(values)
    assert f"OTLP/HTTP to {endpoint}" in text and "Secret otel-auth" in text


@pytest.mark.parametrize(
    ("otel", "where"),
    [
        ({"endpoint": "http://user:s3cret@otel:4318"}, "/otel/endpoint"),  # credentials belong in headers' Secret
        ({"headers": {"value": "authorization=Bearer s3cret"}}, "/otel/headers"),  # never inline
        ({"protocol": "grpc"}, "/otel/protocol"),  # the proxy ships no gRPC exporter
        ({"resourceAttributes": {"team": "a,b=c"}}, "/otel/resourceAttributes/team"),
        ({"sampler": {"name": "parentbased_traceidratio", "arg": "2"}}, "/otel/sampler/arg"),
        ({"sampler": {"name": "probabilistic"}}, "/otel/sampler/name"),
    ],
)
def test_the_schema_refuses_what_the_sdk_would_misread_or_a_secret_inline(otel: dict[str, Any], where: str) -> None:
    helm = pytest.importorskip("helm_python")
    with pytest.raises(helm.HelmValuesError, match=where):
        render({"otel": {"enabled": True, "endpoint": "http://otel:4318", **otel}})


def test_enabled_without_an_endpoint_fails_rendering() -> None:
    helm = pytest.importorskip("helm_python")
    with pytest.raises(helm.HelmError, match=r"otel\.enabled needs otel\.endpoint"):
        render({"otel": {"enabled": True}})
