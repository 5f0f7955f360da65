"""A DEMO upstream: a local fake OpenAI-compatible provider for ``make run`` and the tests.

It is not a model. It speaks OpenAI's wire format (``/v1/models``, chat completions with and without SSE,
legacy completions, embeddings) and, for text, Anthropic's Messages API; it checks the key it receives, echoes the
last user message, and counts usage.
Faults can be queued per key (an error status, a delay, a stream cut mid-way) to watch the proxy fail over.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import hashlib
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Fault:
    """What the next request with a given key meets instead of a normal answer."""

    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    first_byte_delay: float = 0.0
    drop_after: int | None = None


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def key(self) -> str:
        return self.headers.get("Authorization", "").removeprefix("Bearer ")


@dataclass
class Upstream:
    """The fake's state: what it serves, which keys it accepts, what it saw, and the faults it owes."""

    models: tuple[str, ...]
    keys: frozenset[str] = frozenset()
    received: list[Received] = field(default_factory=list)
    faults: dict[str, deque[Fault]] = field(default_factory=dict)
    words_per_chunk: int = 1
    record: bool = True

    def fail_next(self, key: str, *faults: Fault) -> None:
        """Queue faults for requests with ``key`` (``*`` for any key)."""
        self.faults.setdefault(key, deque()).extend(faults)

    def _fault_for(self, key: str) -> Fault | None:
        for name in (key, "*"):
            queue = self.faults.get(name)
            if queue:
                return queue.popleft()
        return None


UPSTREAM = web.AppKey("upstream", Upstream)


def _error(status: int, message: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _reply_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):
                    content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
                return f"echo: {content}"
    prompt = body.get("prompt")
    return f"echo: {prompt}" if isinstance(prompt, str) else "echo"


def _malformed(body: dict[str, Any]) -> str | None:
    """The first field the demo reads that OpenAI's schema check would refuse, if any."""
    messages, tools = body.get("messages"), body.get("tools")
    if messages is not None and not (isinstance(messages, list) and all(isinstance(m, dict) for m in messages)):
        return "messages"
    for message in messages or []:
        content = message.get("content")
        if isinstance(content, list) and not all(isinstance(p, dict) and isinstance(p.get("text", ""), str)
                                                 for p in content):  # fmt: skip
            return "messages[].content"
    if tools is not None and not (isinstance(tools, list) and all(
        isinstance(t, dict) and isinstance(t.get("function", {}), dict) for t in tools
    )):  # fmt: skip
        return "tools"
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError:
        return "body (nested too deeply)"
    return None


def _tool_call(body: dict[str, Any], text: str) -> dict[str, Any] | None:
    """With tools offered and no tool result yet, the demo calls the first tool with the user's words."""
    tools, messages = body.get("tools"), body.get("messages")
    if not tools or not isinstance(messages, list) or any(m.get("role") == "tool" for m in messages):
        return None
    name = tools[0].get("function", {}).get("name", "tool")
    arguments = orjson.dumps({"query": text.removeprefix("echo: ")}).decode()
    return {
        "id": f"call_{uuid.uuid4().hex[:12]}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _usage(body: dict[str, Any], text: str) -> dict[str, int]:
    prompt = len(orjson.dumps(body.get("messages") or body.get("prompt") or "").split())
    completion = len(text.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _models(request: web.Request) -> web.Response:
    upstream = request.app[UPSTREAM]
    if upstream.keys and request.headers.get("Authorization", "").removeprefix("Bearer ") not in upstream.keys:
        return _error(401, "Incorrect API key provided.", "invalid_api_key")
    data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "demo"} for m in upstream.models]
    return web.json_response({"object": "list", "data": data})


async def _received(request: web.Request) -> Received | web.Response:
    """An OpenAI request's JSON body, recorded, once its key and model pass; else OpenAI's error."""
    upstream = request.app[UPSTREAM]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "We could not parse the JSON body of your request.", "invalid_json")
    if not isinstance(body, dict):
        return _error(400, "The request body must be a JSON object.", "invalid_json")
    received = Received(request.path, dict(request.headers), body)
    if upstream.record:
        upstream.received.append(received)
    if upstream.keys and received.key not in upstream.keys:
        return _error(401, f"Incorrect API key provided: {received.key}.", "invalid_api_key")
    if body.get("model") not in upstream.models:
        return _error(404, f"The model `{body.get('model')}` does not exist.", "model_not_found")
    return received


async def _complete(request: web.Request) -> web.StreamResponse:
    upstream = request.app[UPSTREAM]
    received = await _received(request)
    if isinstance(received, web.Response):
        return received
    body, model = received.body, received.body["model"]
    chat = request.path.endswith("/chat/completions")
    if chat and not isinstance(body.get("messages"), list):
        return _error(400, "'messages' is a required property", "invalid_request")
    malformed = _malformed(body)
    if malformed is not None:
        return _error(400, f"Invalid type for '{malformed}'.", "invalid_type")
    fault = upstream._fault_for(received.key) or Fault()
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.status is not None:
        payload = fault.body if fault.body is not None else {"error": {"message": "demo fault", "code": "fault"}}
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        return web.Response(status=fault.status, body=data, headers=fault.headers, content_type="application/json")
    text = _reply_text(body)
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:12]}"
    call = _tool_call(body, text) if chat else None
    if body.get("stream") is True:
        return await _stream(request, upstream, body, text, ident, chat, fault, call)
    usage = _usage(body, text)
    created = int(time.time())
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if call is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        choice: dict[str, Any] = {
            "index": 0, "message": message, "finish_reason": "tool_calls" if call else "stop", "logprobs": None
        }  # fmt: skip
        document = {"id": ident, "object": "chat.completion", "created": created, "model": model,
                    "choices": [choice], "usage": usage}  # fmt: skip
    else:
        document = {"id": ident, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                    "usage": usage}  # fmt: skip
    return web.Response(body=orjson.dumps(document), content_type="application/json")


_EMBEDDING_FIELDS = frozenset({"input", "model", "dimensions", "encoding_format", "user"})


def _embedding_objection(body: dict[str, Any]) -> str | None:
    """What OpenAI's embeddings endpoint would refuse in ``body``, if anything (its schema, checked strictly)."""
    unknown = sorted(set(body) - _EMBEDDING_FIELDS)
    if unknown:
        return f"Unrecognized request argument supplied: {unknown[0]}"
    items = body.get("input")
    items = [items] if isinstance(items, str) else items
    if not isinstance(items, list) or not items or len(items) > 2048:
        return "'input' must be a non-empty string or array of at most 2048 items"
    texts = all(isinstance(i, str) and i for i in items)
    tokens = all(_is_token(i) for i in items)
    arrays = all(isinstance(i, list) and i and all(_is_token(t) for t in i) for i in items)
    if not (texts or tokens or arrays):
        return "'input' must be strings, a token array or token arrays, each non-empty"
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        return "'dimensions' must be a positive integer"
    if body.get("encoding_format", "float") not in ("float", "base64"):
        return "'encoding_format' must be 'float' or 'base64'"
    if not isinstance(body.get("user", ""), str):
        return "'user' must be a string"
    return None


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _vector(item: Any, size: int) -> list[float]:
    """A vector derived from the input alone, of values float32 holds exactly (so base64 round-trips)."""
    digest = hashlib.sha256(orjson.dumps(item)).digest()
    return [(digest[i % len(digest)] - 128) / 128 for i in range(size)]


async def _embeddings(request: web.Request) -> web.Response:
    upstream = request.app[UPSTREAM]
    received = await _received(request)
    if isinstance(received, web.Response):
        return received
    body = received.body
    objection = _embedding_objection(body)
    if objection is not None:
        return _error(400, objection, "invalid_request")
    fault = upstream._fault_for(received.key)
    if fault is not None and fault.status is not None:
        payload = fault.body if fault.body is not None else {"error": {"message": "demo fault", "code": "fault"}}
        return web.Response(status=fault.status, body=orjson.dumps(payload), headers=fault.headers,
                            content_type="application/json")  # fmt: skip
    items = body["input"]
    items = [items] if isinstance(items, str) or isinstance(items[0], int) else items
    size = body.get("dimensions") or 8
    data = []
    for index, item in enumerate(items):
        vector: list[float] | str = _vector(item, size)
        if body.get("encoding_format") == "base64":
            vector = base64.b64encode(array.array("f", vector).tobytes()).decode()  # little-endian hosts only
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(len(i.split()) if isinstance(i, str) else len(i) for i in items)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return web.json_response({"object": "list", "data": data, "model": body["model"], "usage": usage})


def _chunks(words: list[str], size: int) -> Iterable[str]:
    for start in range(0, len(words), size):
        piece = " ".join(words[start : start + size])
        yield piece if start == 0 else " " + piece


async def _stream(
    request: web.Request, upstream: Upstream, body: dict[str, Any], text: str, ident: str, chat: bool, fault: Fault,
    call: dict[str, Any] | None,
) -> web.StreamResponse:  # fmt: skip
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    if fault.first_byte_delay:
        await asyncio.sleep(fault.first_byte_delay)
    created = int(time.time())
    base = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created, "model": body["model"]}  # fmt: skip

    def event(choice: dict[str, Any] | None, usage: dict[str, int] | None = None) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": [choice] if choice else [], "usage": usage}) + b"\n\n"

    pieces = list(_chunks(text.split(), upstream.words_per_chunk))
    events = []
    if chat and call is not None:  # a tool call whose arguments arrive in three pieces, as providers send them
        events.append(event({"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None}))
        head = {**call, "index": 0, "function": {"name": call["function"]["name"], "arguments": ""}}
        events.append(event({"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None}))
        arguments = call["function"]["arguments"]
        third = max(1, len(arguments) // 3)
        for piece in (arguments[:third], arguments[third : 2 * third], arguments[2 * third :]):
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            events.append(event({"index": 0, "delta": delta, "finish_reason": None}))
        events.append(event({"index": 0, "delta": {}, "finish_reason": "tool_calls"}))
    elif chat:
        events.append(event({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}))
        events += [event({"index": 0, "delta": {"content": p}, "finish_reason": None}) for p in pieces]
        events.append(event({"index": 0, "delta": {}, "finish_reason": "stop"}))
    else:
        events += [event({"index": 0, "text": p, "finish_reason": None}) for p in pieces]
        events.append(event({"index": 0, "text": "", "finish_reason": "stop"}))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        events.append(event(None, _usage(body, text)))
    events.append(b"data: [DONE]\n\n")
    for count, data in enumerate(events):
        if fault.drop_after is not None and count >= fault.drop_after:
            assert request.transport is not None
            request.transport.abort()  # a provider that dies mid-stream: no terminating chunk
            return response
        await response.write(data)
    await response.write_eof()
    return response


def _anthropic_event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


async def _anthropic_body(request: web.Request) -> dict[str, Any] | web.Response:
    """The request body once the ``x-api-key`` checks out, else Anthropic's 401."""
    upstream = request.app[UPSTREAM]
    if upstream.keys and request.headers.get("x-api-key") not in upstream.keys:
        error = {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
        return web.json_response(error, status=401)
    body: dict[str, Any] = orjson.loads(await request.read())
    if upstream.record:
        upstream.received.append(Received(request.path, dict(request.headers), body))
    return body


async def _messages(request: web.Request) -> web.StreamResponse:
    """Anthropic's Messages API, text only: enough to demo and benchmark a Claude-shaped provider."""
    upstream = request.app[UPSTREAM]
    body = await _anthropic_body(request)
    if isinstance(body, web.Response):
        return body
    text = _reply_text(body)
    usage = _usage(body, text)
    ident = f"msg_{uuid.uuid4().hex[:12]}"
    message: dict[str, Any] = {
        "id": ident, "type": "message", "role": "assistant", "model": body.get("model"), "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": 1},
    }  # fmt: skip
    if body.get("stream") is not True:
        message.update(content=[{"type": "text", "text": text}], stop_reason="end_turn")
        message["usage"]["output_tokens"] = usage["completion_tokens"]
        return web.json_response(message)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_anthropic_event("message_start", {"message": message}))
    await response.write(
        _anthropic_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    )
    await response.write(_anthropic_event("ping", {}))
    for piece in _chunks(text.split(), upstream.words_per_chunk):
        delta = {"index": 0, "delta": {"type": "text_delta", "text": piece}}
        await response.write(_anthropic_event("content_block_delta", delta))
    await response.write(_anthropic_event("content_block_stop", {"index": 0}))
    final = {
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": usage["completion_tokens"]},
    }
    await response.write(_anthropic_event("message_delta", final))
    await response.write(_anthropic_event("message_stop", {}))
    await response.write_eof()
    return response


async def _count_tokens(request: web.Request) -> web.Response:
    body = await _anthropic_body(request)
    if isinstance(body, web.Response):
        return body
    return web.json_response({"input_tokens": _usage(body, "")["prompt_tokens"]})


def create_demo_app(upstream: Upstream) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream
    for prefix in ("/v1", ""):
        app.router.add_get(f"{prefix}/models", _models)
        app.router.add_post(f"{prefix}/chat/completions", _complete)
        app.router.add_post(f"{prefix}/completions", _complete)
        app.router.add_post(f"{prefix}/embeddings", _embeddings)
    app.router.add_post("/v1/messages", _messages)
    app.router.add_post("/v1/messages/count_tokens", _count_tokens)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="cliproxy-demo-upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--model", action="append", dest="models", help="model id to serve (repeatable)")
    parser.add_argument("--key", action="append", dest="keys", help="accepted bearer key (repeatable)")
    args = parser.parse_args()
    # A long-running demo keeps no request log: only the tests, which build Upstream directly, read it.
    upstream = Upstream(tuple(args.models or ("demo-small", "demo-large")), frozenset(args.keys or ()), record=False)
    print(f"DEMO upstream (not a real provider) on http://{args.host}:{args.port}/v1", flush=True)
    web.run_app(create_demo_app(upstream), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
