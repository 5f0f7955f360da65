"""The proxy in front of every fake vendor, on an event loop of its own, driven by plain synchronous calls.

Property tests send hundreds of requests; starting the fakes and the proxy once per module and driving them from
a synchronous test (hypothesis' own way) keeps that fast. Each inbound API comes with a valid seed body that every
target serves, and with the shape its errors must have.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import brotli
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

try:
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]  # Python 3.14
except ImportError:
    from backports import zstd  # type: ignore[no-redef,unused-ignore]

from cliproxy_proxy.__main__ import load_app
from cliproxy_proxy.demo_upstream import Upstream, create_demo_app
from cliproxy_proxy.loader import ConfigSource

from ..fakes.anthropic_upstream import DEFAULT_KEY as ANTHROPIC_KEY
from ..fakes.anthropic_upstream import start_anthropic
from ..fakes.bedrock import start_bedrock
from ..fakes.gemini_upstream import GEMINI_KEY, start_gemini
from ..fakes.kiro import start_kiro
from ..fakes.responses_upstream import KEYS as RESPONSES_KEYS
from ..fakes.responses_upstream import start_responses
from .proxy import CLIENT_KEY, UPSTREAM_KEYS, UPSTREAM_MODELS, base_config, compat_block, write_yaml

#: Every target wire, by the model id the proxy serves it under: pass-through for one API, translated for the rest.
TARGETS = ("m-openai", "m-anthropic", "m-gemini", "m-vertex", "m-responses", "m-kiro", "m-bedrock")
#: The targets that count tokens; the others answer a count with 501 before reading the body.
COUNTING = ("m-anthropic", "m-gemini", "m-vertex", "m-bedrock")
EMBEDDING = ("m-openai", "m-gemini")  # the others answer embeddings with 404 before any upstream is asked
IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
DATA_URL = f"data:image/png;base64,{IMAGE}"
SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
#: Each Content-Encoding the proxy decodes, and how a client encodes a body in it.
ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress, "zstd": zstd.compress,
}  # fmt: skip
MAX_BODY = 1 << 20  # small, so a decompression bomb is cheap to try
ARGUMENTS = '{"query": "Paris"}'


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    logged: tuple[str, ...] = ()  # what the proxy and aiohttp logged at ERROR while serving it


class _Errors(logging.Handler):
    """Collects ERROR records: an unhandled exception shows there even when the client saw a clean answer."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def openai_error(document: Any) -> bool:
    error = document.get("error") if isinstance(document, dict) else None
    return isinstance(error, dict) and isinstance(error.get("message"), str) and isinstance(error.get("type"), str)


def anthropic_error(document: Any) -> bool:
    error = document.get("error") if isinstance(document, dict) else None
    return (document.get("type") == "error" and isinstance(error, dict)
            and isinstance(error.get("type"), str) and isinstance(error.get("message"), str))  # fmt: skip


def gemini_error(document: Any) -> bool:
    error = document.get("error") if isinstance(document, dict) else None
    return (isinstance(error, dict) and isinstance(error.get("code"), int)
            and isinstance(error.get("message"), str) and isinstance(error.get("status"), str))  # fmt: skip


@dataclass(frozen=True)
class Api:
    """One inbound endpoint: where it is, a body every target serves, and how its errors look."""

    name: str
    path: Callable[[str, bool], str]  # (model, stream) → path
    seed: Callable[[str, bool], dict[str, Any]]  # (model, stream) → a valid body
    is_error: Callable[[Any], bool]
    streams: bool = True
    targets: tuple[str, ...] = TARGETS


def _stop(key: str, model: str) -> dict[str, list[str]]:
    """Stop sequences, for every target but the Responses API, which has none (the proxy refuses them)."""
    return {} if model == "m-responses" else {key: ["END"]}


def _chat(model: str, stream: bool) -> dict[str, Any]:
    function = {"name": "get_weather", "arguments": ARGUMENTS}
    return {
        "model": model, "stream": stream, "max_tokens": 64, "temperature": 0.5, "top_p": 0.9, **_stop("stop", model),
        "tool_choice": "auto", "parallel_tool_calls": True, "n": 1,
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                         {"type": "image_url", "image_url": {"url": DATA_URL}}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                                   "function": function}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                                    "parameters": SCHEMA}}],
    }  # fmt: skip


def _completions(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "prompt": "Say hello", "stream": stream, "max_tokens": 16, "temperature": 0.5,
            "top_p": 0.9, "n": 1, **_stop("stop", model)}  # fmt: skip


def _messages(model: str, stream: bool) -> dict[str, Any]:
    return {
        "model": model, "stream": stream, "max_tokens": 64, "temperature": 0.5, **_stop("stop_sequences", model),
        "system": [{"type": "text", "text": "Answer briefly."}], "tool_choice": {"type": "auto"},
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                              {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                               "input": {"query": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "text", "text": "Sunny, 21 C"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE}}]},
                {"type": "text", "text": "And tomorrow?"}]},
        ],
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": SCHEMA}],
    }  # fmt: skip


def _count_tokens(model: str, stream: bool) -> dict[str, Any]:
    body = _messages(model, stream)
    for key in ("stream", "max_tokens", "temperature", "stop_sequences"):
        body.pop(key, None)
    return body


def _gemini(model: str, stream: bool) -> dict[str, Any]:
    return {
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Paris?"},
                                       {"inlineData": {"mimeType": "image/png", "data": IMAGE}}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"query": "Paris"}},
                                         "thoughtSignature": "skip_thought_signature_validator"}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                                                             "response": {"result": "Sunny, 21 C"}}}]},
        ],
        "systemInstruction": {"parts": [{"text": "Answer briefly."}]},
        "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "Weather", "parameters": SCHEMA}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        "generationConfig": {"temperature": 0.5, "topP": 0.9, "maxOutputTokens": 64, **_stop("stopSequences", model)},
    }  # fmt: skip


def _gemini_count(model: str, stream: bool) -> dict[str, Any]:
    return {"contents": _gemini(model, stream)["contents"]}


def _responses(model: str, stream: bool) -> dict[str, Any]:
    return {
        "model": model, "stream": stream, "instructions": "Answer briefly.", "max_output_tokens": 64,
        "tool_choice": "auto", "parallel_tool_calls": True, "store": False,
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"},
                                         {"type": "input_image", "detail": "auto",
                                                                  "image_url": DATA_URL}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": ARGUMENTS},
            {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21 C"},
        ],
        "tools": [{"type": "function", "name": "get_weather", "description": "Weather", "parameters": SCHEMA,
                   "strict": False}],
    }  # fmt: skip


def _gemini_path(action: str) -> Callable[[str, bool], str]:
    def path(model: str, stream: bool) -> str:
        if action == "countTokens":
            return f"/v1beta/models/{model}:countTokens"
        return f"/v1beta/models/{model}:{'streamGenerateContent?alt=sse' if stream else 'generateContent'}"

    return path


def _embeddings(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "input": ["hello", "embeddings"], "dimensions": 8, "encoding_format": "base64"}


APIS = {
    api.name: api
    for api in (
        Api("openai-chat", lambda m, s: "/v1/chat/completions", _chat, openai_error),
        Api("openai-completions", lambda m, s: "/v1/completions", _completions, openai_error),
        Api("anthropic-messages", lambda m, s: "/v1/messages", _messages, anthropic_error),
        Api(
            "anthropic-count", lambda m, s: "/v1/messages/count_tokens", _count_tokens, anthropic_error, False, COUNTING
        ),
        Api("gemini-generate", _gemini_path("generateContent"), _gemini, gemini_error),
        Api("gemini-count", _gemini_path("countTokens"), _gemini_count, gemini_error, False, COUNTING),
        Api("openai-responses", lambda m, s: "/v1/responses", _responses, openai_error),
        Api("openai-embeddings", lambda m, s: "/v1/embeddings", _embeddings, openai_error, False, EMBEDDING),
    )
}


def problem(api: Api, reply: Reply) -> str | None:
    """What is wrong with the proxy's answer to a hostile request, if anything.

    Never a 5xx (the upstreams here are healthy: a 5xx is the proxy failing); every 4xx is a JSON error in the
    caller's own API format. A 2xx means the body was acceptable and the target served it.
    """
    if reply.logged:
        return f"HTTP {reply.status}, and logged: {reply.logged}"
    if reply.status >= 500:
        return f"HTTP {reply.status}: {reply.body[:300]!r}"
    if b"Traceback" in reply.body or b"internal_error" in reply.body:
        return f"a traceback or internal error in HTTP {reply.status}: {reply.body[:300]!r}"
    if reply.status < 400:
        return None
    try:
        document = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return f"HTTP {reply.status} is not JSON: {reply.body[:300]!r}"
    if not api.is_error(document):
        return f"HTTP {reply.status} is not an error of {api.name}: {reply.body[:300]!r}"
    return None


class Gateway:
    """Fakes of every vendor and the proxy routing one model to each, served on a private event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession, url: str) -> None:
        self.loop, self.session, self.url = loop, session, url
        self.errors = _Errors()

    def send(self, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> Reply:
        """POST ``body`` as given (bytes, not re-encoded) with the client key and ``headers``."""
        return self.loop.run_until_complete(self._send("POST", path, body, headers or {}))

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Reply:
        return self.loop.run_until_complete(self._send("GET", path, None, headers or {}))

    async def _send(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]) -> Reply:
        sent = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json", **headers}
        url = URL(self.url + path, encoded=True)  # the path goes out as written, hostile escapes and all
        self.errors.messages.clear()
        async with self.session.request(method, url, data=body, headers=sent,
                                        skip_auto_headers=("Content-Type",)) as response:  # fmt: skip
            body = await response.read()
        await asyncio.sleep(0)  # let the server's side finish its logging
        return Reply(response.status, response.content_type, body, tuple(self.errors.messages))


@contextlib.contextmanager
def running_gateway(workdir: Path) -> Iterator[Gateway]:
    """A gateway for one test module; everything it started is stopped when the block ends."""
    loop = asyncio.new_event_loop()
    servers: list[TestServer] = []

    async def serve(app: web.Application, **_: Any) -> TestServer:
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return server

    async def start() -> Gateway:
        openai_url = str((await serve(create_demo_app(Upstream(UPSTREAM_MODELS, UPSTREAM_KEYS)))).make_url("/v1"))
        _, claude_url = await start_anthropic(serve)
        _, gemini_url = await start_gemini(serve)
        _, codex_url = await start_responses(serve)
        kiro, kiro_url = await start_kiro(serve, token_ttl=86400)
        access, refresh = kiro.issue()
        bedrock, bedrock_url = await start_bedrock(serve)
        key_id, secret, token = bedrock.issue(86400)

        def models(name: str, alias: str) -> list[dict[str, str]]:
            return [{"name": name, "alias": alias}]

        config = base_config(**{
            "max-body-bytes": MAX_BODY,
            "openai-compatibility": [compat_block(openai_url, models=[("up-small", "m-openai")])],
            "claude-api-key": [{"api-key": ANTHROPIC_KEY, "base-url": claude_url,
                                "models": models("claude-sonnet-4-6", "m-anthropic")}],
            "gemini-api-key": [{"api-key": GEMINI_KEY, "base-url": gemini_url,
                                "models": models("gemini-2.5-flash", "m-gemini")}],
            "vertex-api-key": [{"api-key": GEMINI_KEY, "base-url": gemini_url,
                                "models": models("gemini-2.5-pro", "m-vertex")}],
            "codex-api-key": [{"api-key": sorted(RESPONSES_KEYS)[0], "base-url": codex_url,
                               "models": models("gpt-5-codex", "m-responses")}],
            "kiro": [{"access-token": access, "refresh-token": refresh, "profile-arn": kiro.profile_arn,
                      "base-url": kiro_url, "refresh-url": kiro_url, "models": models("claude-sonnet-4.5", "m-kiro")}],
            "bedrock": [{"region": "us-east-1", "base-url": bedrock_url, "access-key-id": key_id,
                         "secret-access-key": secret, "session-token": token,
                         "models": models("anthropic.claude-sonnet-4-20250514-v1:0", "m-bedrock")}],
        })  # fmt: skip
        path = workdir / "config.yaml"
        write_yaml(path, config)
        proxy = await serve(load_app(ConfigSource(path, None), reload_interval=3600))
        session = aiohttp.ClientSession(auto_decompress=False)
        return Gateway(loop, session, str(proxy.make_url("")).rstrip("/"))

    async def stop(gateway: Gateway | None) -> None:
        if gateway is not None:
            await gateway.session.close()
        for server in reversed(servers):
            await server.close()

    gateway = None
    loggers = [logging.getLogger(name) for name in ("cliproxy", "aiohttp")]
    try:
        gateway = loop.run_until_complete(start())
        for logger in loggers:
            logger.addHandler(gateway.errors)
        yield gateway
    finally:
        if gateway is not None:
            for logger in loggers:
                logger.removeHandler(gateway.errors)
        loop.run_until_complete(stop(gateway))
        loop.close()
