"""The cloud codecs' own knowledge: Azure's URLs and auth header, Claude's body on Vertex, Vertex predict embeddings."""

from __future__ import annotations

import orjson
import pytest

from cliproxy_proxy.catalog import Wire
from cliproxy_proxy.config import parse_config
from cliproxy_proxy.translate import UPSTREAM
from cliproxy_proxy.translate.canonical import Message, Request, Text, TranslationError
from cliproxy_proxy.translate.embeddings import EmbeddingsRequest, VertexEmbeddings
from cliproxy_proxy.translate.vertex_claude import VertexClaudeCodec


def _entries(block: str, *entries: dict[str, object]) -> list[object]:
    return list(getattr(parse_config({block: list(entries)}), block.replace("-", "_")))


def test_azure_deployment_urls_carry_the_deployment_and_version_and_v1_urls_neither() -> None:
    models = [{"name": "gpt4o-prod"}]
    deployments, v1, entra = (UPSTREAM[Wire.AZURE_OPENAI].for_entry(entry) for entry in _entries(
        "azure-openai",
        {"resource": "contoso", "api-key": "k", "api-version": "2025-01-01-preview", "models": models},
        {"resource": "contoso", "api-key": "k", "api": "v1", "models": models},
        {"resource": "contoso", "entra": {}, "api": "v1", "models": models},
    ))  # fmt: skip
    version = "?api-version=2025-01-01-preview"
    assert deployments.locate("/chat/completions", "gpt4o-prod") == f"/deployments/gpt4o-prod/chat/completions{version}"
    assert deployments.locate("/embeddings", "e") == f"/deployments/e/embeddings{version}"
    assert v1.locate("/chat/completions", "gpt4o-prod") == "/chat/completions"
    assert deployments.auth_headers("KEY") == v1.auth_headers("KEY") == {"api-key": "KEY"}
    assert entra.auth_headers("TOKEN") == {"Authorization": "Bearer TOKEN"}


def test_claude_on_vertex_moves_the_model_to_the_url_and_the_version_into_the_body() -> None:
    codec = VertexClaudeCodec()
    model = "claude-sonnet-4-5@20250929"
    body = orjson.loads(
        codec.encode_request(Request(model=model, messages=[Message("user", [Text("hi")])], stream=True))
    )
    assert "model" not in body and body["anthropic_version"] == "vertex-2023-10-16" and body["stream"] is True
    assert codec.upstream_path(model, True) == f"/v1/publishers/anthropic/models/{model}:streamRawPredict"
    assert codec.auth_headers("ya29.t") == {"Authorization": "Bearer ya29.t"} and not codec.default_headers


def test_vertex_speaks_claude_only_at_a_project_endpoint_and_with_bearer_tokens() -> None:
    express = UPSTREAM[Wire.VERTEX]
    assert express.for_model("claude-x") is express and "x-goog-api-key" in express.auth_headers("k")
    scoped = express.for_entry(_entries("vertex-api-key", {"adc": True, "project": "demo-project"})[0])
    assert isinstance(scoped.for_model("claude-x"), VertexClaudeCodec) and scoped.for_model("gemini-2.5-pro") is scoped
    assert scoped.auth_headers("ya29.t") == {"Authorization": "Bearer ya29.t"}


def test_vertex_predict_embeddings_limits_and_counts() -> None:
    wire = VertexEmbeddings()
    two = EmbeddingsRequest(("a b", "c"), (), 4, "float")
    assert orjson.loads(wire.encode(two, "text-embedding-005")) == {
        "instances": [{"content": "a b"}, {"content": "c"}], "parameters": {"outputDimensionality": 4}}  # fmt: skip
    with pytest.raises(TranslationError, match="at most 1"):
        wire.encode(two, "gemini-embedding-001")
    with pytest.raises(TranslationError, match="token arrays"):
        wire.encode(EmbeddingsRequest((), ((1, 2),), None, "float"), "text-embedding-005")
    answer = {"predictions": [{"embeddings": {"values": [0.5], "statistics": {"token_count": 2}}},
                              {"embeddings": {"values": [0.25], "statistics": {"token_count": -7}}}]}  # fmt: skip
    decoded = wire.decode(orjson.dumps(answer), two, "e")
    assert decoded.tokens == 2 and not decoded.estimated  # a negative count from upstream counts nothing
    with pytest.raises(ValueError, match="number of embeddings"):
        wire.decode(orjson.dumps({"predictions": answer["predictions"][:1]}), two, "e")
