"""A fake Anthropic Messages API (``POST /v1/messages``, ``GET /v1/models``) for tests.

It is not a model, but it is strict about the wire: every request body is validated against the official
``anthropic`` SDK's request types (unknown fields refused), plus the rules the real API enforces beyond the types
(tool results answering the previous turn's calls and coming first, thinking signatures it issued itself, the
thinking budget below ``max_tokens``, no temperature with thinking, ...). Invalid requests get Anthropic's 400 and
are recorded with the problem. Answers echo the last user text, call the first tool when tools are offered, think
(with a signed thinking block) when asked to "think" with thinking on, and stream the exact event sequence the real
API sends. Faults (an error status with headers, an in-stream error, a cut connection) are queued per request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import itertools
import re
import uuid
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pydantic
from aiohttp import web
from aiohttp.test_utils import TestServer
from anthropic.types.beta.message_create_params import MessageCreateParamsNonStreaming as BetaNonStreaming
from anthropic.types.beta.message_create_params import MessageCreateParamsStreaming as BetaStreaming
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming, MessageCreateParamsStreaming

DEFAULT_KEY = "sk-ant-test-key"
DEFAULT_MODELS = ("claude-sonnet-4-6", "claude-haiku-4-5")
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error",
}  # fmt: skip

#: The SDK's request types with unknown fields refused (the SDK itself would just pass them on).
_STRICT = pydantic.ConfigDict(extra="forbid")
_ADAPTERS: dict[bool, pydantic.TypeAdapter[Any]] = {
    False: pydantic.TypeAdapter(list[MessageCreateParamsNonStreaming], config=_STRICT),
    True: pydantic.TypeAdapter(list[MessageCreateParamsStreaming], config=_STRICT),
}
#: With an ``anthropic-beta`` header the API takes the fields betas unlock (context_management, mcp_servers...).
with warnings.catch_warnings():  # a beta TypedDict that allows extra items stays open: as the API does
    warnings.simplefilter("ignore", pydantic.warnings.TypedDictExtraConfigWarning)
    _BETA_ADAPTERS: dict[bool, pydantic.TypeAdapter[Any]] = {
        False: pydantic.TypeAdapter(list[BetaNonStreaming], config=_STRICT),
        True: pydantic.TypeAdapter(list[BetaStreaming], config=_STRICT),
    }
#: Sampling fields the HTTP API still takes although SDK 1.x dropped them from its types, with their ranges.
_SAMPLING = {"temperature": (0.0, 1.0), "top_p": (0.0, 1.0), "top_k": (0, 1_000_000)}
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


def sign(thinking: str) -> str:
    """The signature this fake issues for a thinking text (and accepts back)."""
    return base64.b64encode(hashlib.sha256(b"fake-anthropic:" + thinking.encode()).digest()).decode()


def error_json(status: int, message: str, kind: str | None = None) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind or ERROR_TYPES.get(status, "api_error"), "message": message}}


# -- validation -------------------------------------------------------------------------------------------


class _Invalid(Exception):
    def __init__(self, path: tuple[Any, ...], root: Any, error: pydantic.ValidationError) -> None:
        self.path, self.root, self.error = path, root, error


def _materialize(value: Any, raw: Any, path: tuple[Any, ...]) -> Any:
    """Drains the lazy iterators pydantic builds for ``Iterable`` fields, so every element is validated."""
    if isinstance(value, dict):
        return {k: _materialize(v, raw.get(k) if isinstance(raw, dict) else None, (*path, k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_materialize(v, _item(raw, i), (*path, i)) for i, v in enumerate(value)]
    if isinstance(value, Iterator):
        items: list[Any] = []
        while True:
            try:
                item = next(value)
            except StopIteration:
                return items
            except pydantic.ValidationError as error:
                raise _Invalid(path, raw, error) from None
            items.append(_materialize(item, _item(raw, len(items)), (*path, len(items))))
    return value


def _item(raw: Any, index: int) -> Any:
    return raw[index] if isinstance(raw, list) and index < len(raw) else None


def _has(node: Any, step: Any) -> bool:
    if isinstance(node, dict):
        return step in node
    return isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)


def _split(root: Any, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[tuple[int, str]]]:
    """A pydantic ``loc`` as the real path in the input and the union branches tried along it."""
    node, path, branches = root, [], []
    for step in loc:
        if _has(node, step):
            node = node[step]
            path.append(step)
        else:
            branches.append((len(path), str(step)))
    return tuple(path), branches


def _describe(errors: list[Any], root: Any, prefix: tuple[Any, ...]) -> str:
    """The errors that matter: union branches whose ``type``/``role`` tag did not even match are left out.

    ``root`` is the input the error's ``loc`` starts from and ``prefix`` its path in the body.
    """
    located = []
    for err in errors:
        path, branches = _split(root, tuple(err["loc"]))
        chain = [(path[:depth], tuple(b for _, b in branches[: n + 1])) for n, (depth, _) in enumerate(branches)]
        located.append((err, path, branches, chain))
    rejected = {
        chain[-1]
        for err, path, branches, chain in located
        if chain
        and err["type"] == "literal_error"
        and len(path) == branches[-1][0] + 1
        and path[-1] in ("type", "role")
    }
    messages: list[str] = []
    for err, path, _, chain in located:
        if any(link in rejected for link in chain):
            continue
        text = f"{'.'.join(map(str, (*prefix, *path)))}: {err['msg']}"
        if text not in messages:
            messages.append(text)
    if not messages:  # nothing matched at all: name the tag no branch accepts
        tags = [(e, p) for e, p, _, _ in located if e["type"] == "literal_error" and p and p[-1] in ("type", "role")]
        err, path = (tags or [(located[0][0], located[0][1])])[0]
        return f"{'.'.join(map(str, (*prefix, *path)))}: unexpected value {err['input']!r}"
    return "; ".join(messages[:3])


def validate_request(body: Any, beta: bool = False) -> str | None:
    """What is wrong with a Messages request body, as the real API would answer, or None when it is valid."""
    if not isinstance(body, dict):
        return "body: must be a JSON object"
    typed = {k: v for k, v in body.items() if k not in _SAMPLING}
    adapter = (_BETA_ADAPTERS if beta else _ADAPTERS)[body.get("stream") is True]
    try:
        _materialize(adapter.validate_python([typed])[0], typed, ())
    except pydantic.ValidationError as error:
        errors = [{**e, "loc": e["loc"][1:]} for e in error.errors()]  # the adapter validates a list of one body
        return _describe(errors, typed, ())
    except _Invalid as invalid:
        return _describe(invalid.error.errors(), invalid.root, invalid.path)
    return _sampling_problem(body) or _thinking_problem(body) or _tools_problem(body) or _messages_problem(body)


def _sampling_problem(body: dict[str, Any]) -> str | None:
    for name, (low, high) in _SAMPLING.items():
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high
        ):
            return f"{name}: must be a number between {low} and {high}"
    if body.get("temperature") is not None and body.get("top_p") is not None:
        return "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
    return None


def _thinking_problem(body: dict[str, Any]) -> str | None:
    thinking = body.get("thinking") or {}
    if thinking.get("type") != "enabled":
        return None
    if thinking["budget_tokens"] < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if body["max_tokens"] <= thinking["budget_tokens"]:
        return "`max_tokens` must be greater than `thinking.budget_tokens`."
    if body.get("temperature") not in (None, 1):
        return "`temperature` may only be set to 1 when thinking is enabled."
    if body.get("top_p") is not None and body["top_p"] < 0.95:
        return "`top_p` must be greater than or equal to 0.95 or unset when thinking is enabled."
    if body.get("top_k") is not None:
        return "`top_k` must be unset when thinking is enabled."
    if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        return "Thinking may not be enabled when tool_choice forces tool use."
    turns = [(i, _blocks(m["content"])) for i, m in enumerate(body["messages"]) if m["role"] == "assistant"]
    if turns and any(b["type"] == "tool_use" for b in turns[-1][1]):
        index, blocks = turns[-1]
        if blocks[0]["type"] not in ("thinking", "redacted_thinking"):
            found = blocks[0]["type"]
            return (
                f"messages.{index}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{found}`. "
                "When `thinking` is enabled, a final `assistant` message must start with a thinking block "
                "(preceeding the lastmost set of `tool_use` and `tool_result` blocks)."
            )
    return None


def _tools_problem(body: dict[str, Any]) -> str | None:
    tools = body.get("tools") or []
    names = [t.get("name") for t in tools]
    for index, tool in enumerate(tools):
        if tool.get("type") not in (None, "custom"):
            continue  # a server tool: its own type checked it
        if not _TOOL_NAME.match(str(tool["name"])):
            return f"tools.{index}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
        if tool["input_schema"].get("type") != "object":
            return f"tools.{index}.custom.input_schema.type: Input should be 'object'"
    if len(set(names)) != len(names):
        return "tools: Tool names must be unique."
    choice = body.get("tool_choice")
    if choice is not None and not tools and choice.get("type") != "none":
        return "tool_choice: tool_choice may only be specified while providing tools"
    if choice is not None and choice.get("type") == "tool" and choice["name"] not in names:
        return f"tool_choice.name: tool {choice['name']!r} is not among the tools"
    return None


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _messages_problem(body: dict[str, Any]) -> str | None:
    messages = body["messages"]
    if not messages:
        return "messages: at least one message is required"
    calls: list[str] = []  # tool_use ids the previous assistant turn left open
    for index, message in enumerate(messages):
        blocks = _blocks(message["content"])
        last = index == len(messages) - 1
        if not blocks and not (last and message["role"] == "assistant"):
            return f"messages.{index}: all messages must have non-empty content except for the optional final assistant message"  # noqa: E501
        results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        if calls and (message["role"] != "user" or set(calls) - set(results)):
            missing = ", ".join(sorted(set(calls) - set(results)))
            return (f"messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{missing}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.")  # fmt: skip  # noqa: E501
        if unexpected := set(results) - set(calls):
            return (f"messages.{index}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{', '.join(sorted(unexpected))}. Each `tool_result` block must have a corresponding `tool_use` "
                    "block in the previous message.")  # fmt: skip
        kinds = [b["type"] for b in blocks]
        if any(a != "tool_result" and b == "tool_result" for a, b in itertools.pairwise(kinds)):
            return f"messages.{index}.content: `tool_result` blocks must come first, before any other content"
        for number, block in enumerate(blocks):
            if problem := _block_problem(block, f"messages.{index}.content.{number}"):
                return problem
        calls = [b["id"] for b in blocks if b["type"] == "tool_use"] if message["role"] == "assistant" else []
    return None


def _block_problem(block: dict[str, Any], where: str) -> str | None:
    kind = block["type"]
    if kind == "text" and not block["text"]:
        return f"{where}.text: text content blocks must be non-empty"
    if kind == "thinking" and block["signature"] != sign(block["thinking"]):
        return f"{where}: Invalid `signature` in `thinking` block"
    if kind == "image" and block["source"]["type"] == "base64":
        try:
            base64.b64decode(block["source"]["data"], validate=True)
        except (binascii.Error, ValueError):
            return f"{where}.source.base64.data: invalid base64 data"
    if kind == "tool_result" and isinstance(block.get("content"), list):
        for number, item in enumerate(block["content"]):
            if problem := _block_problem(item, f"{where}.content.{number}"):
                return problem
    return None


# -- the fake ---------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """What the next request meets instead of a normal answer."""

    status: int | None = None  # answer with this status and Anthropic's error body
    message: str = "scripted fault"
    error_type: str | None = None  # defaults to the type Anthropic uses for ``status``
    headers: dict[str, str] = field(default_factory=dict)  # e.g. retry-after
    delay: float = 0.0
    stream_error: str | None = None  # a stream answers 200, then sends an ``error`` event of this type
    drop_after: int | None = None  # a stream is cut (no terminating events) after this many events


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any
    problem: str | None = None  # why the request was refused with a 400, if it was

    @property
    def key(self) -> str:
        """The API key, from ``x-api-key`` or, as SDK 1.x sends it, ``Authorization: Bearer``."""
        return _key(self.headers)


@dataclass
class AnthropicUpstream:
    """The fake's state: accepted keys and models, what it received, the faults it owes, how it streams."""

    keys: frozenset[str] = frozenset({DEFAULT_KEY})
    models: tuple[str, ...] = DEFAULT_MODELS
    received: list[Received] = field(default_factory=list)
    faults: deque[Fault] = field(default_factory=deque)
    words_per_delta: int = 1
    json_chunk: int = 6  # characters of tool input per input_json_delta
    parallel_calls: int = 1  # tool_use blocks per answer (one per offered tool, at most), unless disabled
    cached_tokens: int = 0  # reported as cache_read_input_tokens

    def fail_next(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    @property
    def bodies(self) -> list[Any]:
        return [r.body for r in self.received]

    @property
    def invalid(self) -> list[Received]:
        return [r for r in self.received if r.problem is not None]


ANTHROPIC_UPSTREAM = web.AppKey("anthropic_upstream", AnthropicUpstream)


def _key(headers: Mapping[str, str]) -> str:
    bearer = headers.get("authorization", "")
    return headers.get("x-api-key") or (bearer[7:] if bearer.lower().startswith("bearer ") else "")


def _error(status: int, message: str, kind: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(error_json(status, message, kind)),
                        content_type="application/json", headers=headers)  # fmt: skip


def _text_of(message: dict[str, Any]) -> str:
    texts = []
    for block in _blocks(message["content"]):
        if block["type"] == "text":
            texts.append(block["text"])
        elif block["type"] == "tool_result":
            texts.extend(b["text"] for b in _blocks(block.get("content") or []) if b["type"] == "text")
    return " ".join(texts)


def _sample(schema: dict[str, Any], text: str) -> dict[str, Any]:
    """Input for a tool: the user's words in the first string property, plain values elsewhere."""
    values: dict[str, Any] = {}
    placed = False
    for name, spec in (schema.get("properties") or {}).items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if isinstance(spec, dict) and spec.get("enum"):
            values[name] = spec["enum"][0]
        elif kind == "string":
            values[name], placed = (text, True) if not placed else ("demo", placed)
        else:
            values[name] = {"integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}.get(str(kind))
    return values


def _answer(state: AnthropicUpstream, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str, str | None]:
    """The content blocks, stop_reason and stop_sequence this fake answers ``body`` with."""
    last = body["messages"][-1]
    text = _text_of(last) if last["role"] == "user" else ""
    answered = last["role"] == "user" and any(b["type"] == "tool_result" for b in _blocks(last["content"]))
    blocks: list[dict[str, Any]] = []
    if (body.get("thinking") or {}).get("type") in ("enabled", "adaptive") and re.search(r"\bthink", text, re.I):
        thought = f"The user wrote {text!r}. An echo answers it."
        blocks.append({"type": "thinking", "thinking": thought, "signature": sign(thought)})
    tools, choice = body.get("tools") or [], body.get("tool_choice") or {"type": "auto"}
    if tools and not answered and choice["type"] != "none":
        chosen = [t for t in tools if t["name"] == choice["name"]] if choice["type"] == "tool" else tools
        count = 1 if choice.get("disable_parallel_tool_use") else min(state.parallel_calls, len(chosen))
        if choice["type"] == "auto":
            blocks.append({"type": "text", "text": f"Calling {chosen[0]['name']}."})
        for tool in chosen[:count]:
            call = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": tool["name"]}
            blocks.append({**call, "input": _sample(tool["input_schema"], text)})
        return blocks, "tool_use", None
    reply, reason, matched = f"echo: {text}", "end_turn", None
    hits = [(reply.find(s), s) for s in body.get("stop_sequences") or [] if s in reply]
    if hits:
        position, matched = min(hits)
        reply, reason = reply[:position], "stop_sequence"
    if len(reply.split()) > body["max_tokens"]:
        reply, reason, matched = " ".join(reply.split()[: body["max_tokens"]]), "max_tokens", None
    if reply:
        blocks.append({"type": "text", "text": reply})
    return blocks, reason, matched


def _usage(state: AnthropicUpstream, body: dict[str, Any], blocks: list[dict[str, Any]]) -> dict[str, int]:
    prompt = len(orjson.dumps([body.get("system"), body["messages"]]).split())
    output = sum(len(orjson.dumps(b).split()) for b in blocks) or 1
    return {"input_tokens": prompt, "output_tokens": output, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": state.cached_tokens}  # fmt: skip


def _sse(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"


def _pieces(text: str, words: int) -> list[str]:
    split = text.split(" ")
    return [" ".join(split[i : i + words]) if i == 0 else " " + " ".join(split[i : i + words])
            for i in range(0, len(split), words)]  # fmt: skip


def stream_events(
    state: AnthropicUpstream, message: dict[str, Any], stream_error: str | None = None
) -> Iterable[bytes]:
    """The event sequence Anthropic sends for ``message``: start, blocks (with a ping after the first), end."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 1}}  # fmt: skip
    yield _sse("message_start", {"message": start})
    if stream_error is not None:
        yield _sse("error", {"error": {"type": stream_error, "message": "Overloaded"}})
        return
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        empty = {"text": {"type": "text", "text": ""}, "tool_use": {**block, "input": {}},
                 "thinking": {"type": "thinking", "thinking": "", "signature": ""}}[kind]  # fmt: skip
        yield _sse("content_block_start", {"index": index, "content_block": empty})
        if index == 0:
            yield _sse("ping", {})
        if kind == "text":
            deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"], state.words_per_delta)]
        elif kind == "thinking":
            deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(block["thinking"], 2)]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:  # Anthropic opens tool input with an empty piece
            raw = orjson.dumps(block["input"]).decode()
            pieces = [""] + [raw[i : i + state.json_chunk] for i in range(0, len(raw), state.json_chunk)]
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
        for delta in deltas:
            yield _sse("content_block_delta", {"index": index, "delta": delta})
        yield _sse("content_block_stop", {"index": index})
    final = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    yield _sse("message_delta", {"delta": final, "usage": {"output_tokens": usage["output_tokens"]}})
    yield _sse("message_stop", {})


async def _messages(request: web.Request) -> web.StreamResponse:
    state = request.app[ANTHROPIC_UPSTREAM]
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = raw.decode("utf-8", "replace")
    received = Received(request.path, {k.lower(): v for k, v in request.headers.items()}, body)
    state.received.append(received)
    if received.key not in state.keys:
        return _error(401, "invalid x-api-key")
    versions = request.headers.getall("anthropic-version", [])
    if len(versions) != 1:
        received.problem = "anthropic-version: header is required" if not versions else "anthropic-version: given twice"
        return _error(400, received.problem)
    return await respond(request, state, received, body)


async def respond(request: web.Request, state: AnthropicUpstream, received: Received, body: Any) -> web.StreamResponse:
    """A Messages answer to an authorised request: the body checked, then answered whole or streamed."""
    received.problem = validate_request(body, beta="anthropic-beta" in received.headers)
    if received.problem is not None:
        return _error(400, received.problem)
    if body["model"] not in state.models:
        return _error(404, f"model: {body['model']}")
    fault = state.faults.popleft() if state.faults else Fault()
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.status is not None:
        return _error(fault.status, fault.message, fault.error_type, fault.headers)
    blocks, reason, stop_sequence = _answer(state, body)
    message = {
        "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": body["model"],
        "content": blocks, "stop_reason": reason, "stop_sequence": stop_sequence,
        "usage": _usage(state, body, blocks),
    }  # fmt: skip
    headers = {"request-id": f"req_{uuid.uuid4().hex[:24]}", "anthropic-ratelimit-requests-remaining": "99"}
    if body.get("stream") is not True:
        return web.Response(body=orjson.dumps(message), content_type="application/json", headers=headers)
    response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    for count, event in enumerate(stream_events(state, message, fault.stream_error)):
        if fault.drop_after is not None and count >= fault.drop_after:
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write(event)
    await response.write_eof()
    return response


async def _models(request: web.Request) -> web.Response:
    state = request.app[ANTHROPIC_UPSTREAM]
    if _key({k.lower(): v for k, v in request.headers.items()}) not in state.keys:
        return _error(401, "invalid x-api-key")
    data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in state.models]
    return web.json_response({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None})  # fmt: skip


def create_anthropic_app(state: AnthropicUpstream) -> web.Application:
    app = web.Application()
    app[ANTHROPIC_UPSTREAM] = state
    app.router.add_post("/v1/messages", _messages)
    app.router.add_get("/v1/models", _models)
    return app


async def start_anthropic(
    aiohttp_server: Callable[..., Awaitable[TestServer]], **options: Any
) -> tuple[AnthropicUpstream, str]:
    """Serves a fake on loopback; the URL is the base URL without ``/v1``, as Anthropic's SDK and the proxy take it."""
    state = AnthropicUpstream(**options)
    server = await aiohttp_server(create_anthropic_app(state))
    return state, str(server.make_url("")).rstrip("/")
