"""Claude on Vertex AI: Anthropic's Messages wire through ``rawPredict`` / ``streamRawPredict``.

The body is Anthropic's with two changes Vertex requires: the model is in the URL, never in the body, and the API
version is a body field, ``anthropic_version: vertex-2023-10-16``, not a header. Answers and streams are
Anthropic's own. The credential is the Vertex entry's: a project endpoint and a Google access token.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import orjson

from .anthropic import AnthropicCodec
from .canonical import Request

VERTEX_VERSION = "vertex-2023-10-16"


class VertexClaudeCodec(AnthropicCodec):
    """The Anthropic codec's upstream half, addressed and versioned as Vertex wants."""

    takes_client_bodies = False  # the body must change for Vertex; the format (and Claude's signatures) is the same
    default_headers: Mapping[str, str] = MappingProxyType({})
    counts_tokens = False

    def upstream_path(self, model: str, stream: bool) -> str:
        action = "streamRawPredict" if stream else "rawPredict"
        return f"/v1/publishers/anthropic/models/{model}:{action}"  # the credential's project scope is put in

    def encode_request(self, request: Request) -> bytes:
        body = self.request_body(request)
        del body["model"]
        body["anthropic_version"] = VERTEX_VERSION
        return orjson.dumps(body)

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}  # a Google access token
