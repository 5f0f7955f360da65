"""A fake Vertex AI project endpoint: Gemini (the Gemini fake's paths), ``predict`` embeddings, and Claude through
``rawPredict`` / ``streamRawPredict``, every project path authorised by an access token from the identity fake.

Claude on Vertex takes Anthropic's Messages body with two differences, both checked here: the model is in the
path and never in the body, and ``anthropic_version`` is a body field whose value is ``vertex-2023-10-16``. The
rest is the Anthropic fake's own validation and answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from .anthropic_upstream import AnthropicUpstream, Received, respond
from .gemini_upstream import GeminiUpstream, create_gemini_app, google_error
from .google_identity import GoogleIdentity

VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"


@dataclass
class Vertex:
    """The fake's parts: the Gemini side, the Claude side, and the identity whose tokens both accept."""

    gemini: GeminiUpstream
    claude: AnthropicUpstream
    identity: GoogleIdentity
    url: str = ""
    refused_tokens: int = 0  # requests refused for an expired or unknown token


VERTEX = web.AppKey("vertex", Vertex)


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(google_error(status, message)), content_type="application/json"
    )


async def _raw_predict(request: web.Request) -> web.StreamResponse:
    vertex = request.app[VERTEX]
    model, _, action = request.match_info["call"].partition(":")
    if action not in ("rawPredict", "streamRawPredict"):
        return _error(404, f"The requested URL {request.path} was not found on this server.")
    headers = {k.lower(): v for k, v in request.headers.items()}
    token = headers.get("authorization", "").removeprefix("Bearer ")
    if not vertex.identity.valid(token):
        vertex.refused_tokens += 1
        return _error(401, "Request had invalid authentication credentials. Expected OAuth 2 access token.")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "Invalid JSON payload received.")
    received = Received(request.path, headers, body)
    vertex.claude.received.append(received)
    problem = None
    if not isinstance(body, dict):
        problem = "the body must be a JSON object"
    elif "model" in body:
        problem = "model: Extra inputs are not permitted (on Vertex the model is in the URL)"
    elif body.get("anthropic_version") != VERTEX_ANTHROPIC_VERSION:
        problem = f"anthropic_version: must be {VERTEX_ANTHROPIC_VERSION!r}"
    elif (action == "streamRawPredict") != (body.get("stream") is True):
        problem = "stream: streamRawPredict streams, rawPredict does not"
    if problem is not None:
        received.problem = problem
        return web.json_response({"type": "error", "error": {"type": "invalid_request_error", "message": problem}},
                                 status=400)  # fmt: skip
    messages: dict[str, Any] = {k: v for k, v in body.items() if k != "anthropic_version"}
    return await respond(request, vertex.claude, received, {"model": model, **messages})


async def start_vertex(aiohttp_server: Callable[..., Awaitable[TestServer]], identity: GoogleIdentity,
                       claude_models: tuple[str, ...] = ("claude-sonnet-4-5@20250929",)) -> Vertex:  # fmt: skip
    """Serve the fake on loopback; ``url`` is the base URL the proxy's ``base-url`` takes."""
    vertex = Vertex(GeminiUpstream(tokens=identity.valid), AnthropicUpstream(models=claude_models), identity)
    app = create_gemini_app(vertex.gemini)
    app[VERTEX] = vertex
    path = "/{version}/projects/{project}/locations/{location}/publishers/anthropic/models/{call}"
    app.router.add_post(path, _raw_predict)
    server = await aiohttp_server(app)
    vertex.url = str(server.make_url("")).rstrip("/")
    return vertex
