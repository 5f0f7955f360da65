"""A fake OpenAI Responses API (``POST /v1/responses``) that holds every request to the SDK's own types.

It is not a model: it echoes the last user text, calls the first function tool when tools are offered and no
tool output answers yet, and reasons (a summary plus an ``encrypted_content`` token it remembers) when asked to.
What it does check is what the real API would refuse: a body that does not fit ``ResponseCreateParams`` from the
installed ``openai`` SDK, a function output with no matching call or a call left unanswered, reasoning that
points at stored items while ``store`` is false, encrypted reasoning it never issued. Its streams are the real
event sequence. Faults (an error status, a stream cut after N events) are queued per request.
"""

from __future__ import annotations

import base64
import functools
import typing
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pydantic
import typing_extensions
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai.types.responses import response_create_params

from cliproxy_proxy.errors import error_body

MODELS = ("gpt-5-codex", "gpt-5-mini", "gpt-4o")
NON_REASONING = frozenset({"gpt-4o"})  # models that refuse reasoning settings and encrypted reasoning
KEYS = frozenset({"sk-fake-1", "sk-fake-2"})


@dataclass
class Fault:
    """What the next request meets instead of an answer: an error status, or a stream cut after some events."""

    status: int | None = None
    message: str = "fault injected by the fake"
    headers: dict[str, str] = field(default_factory=dict)
    drop_after: int | None = None


@dataclass
class Received:
    headers: dict[str, str]
    body: Any


@dataclass
class ResponsesUpstream:
    """The fake's state: which keys and models it accepts, what it received, the faults it owes."""

    keys: frozenset[str] = KEYS
    models: tuple[str, ...] = MODELS
    received: list[Received] = field(default_factory=list)
    faults: deque[Fault] = field(default_factory=deque)
    issued: set[str] = field(default_factory=set)  # encrypted reasoning handed out, so it can be "decrypted" later
    text_pieces: int = 3

    def fail_next(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    @property
    def bodies(self) -> list[Any]:
        return [r.body for r in self.received]


STATE = web.AppKey("responses_upstream", ResponsesUpstream)


class Refused(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def response(self) -> web.Response:
        body = error_body(self.status, self.message, self.code)
        body["error"]["param"] = self.param
        return web.json_response(body, status=self.status, dumps=lambda v: orjson.dumps(v).decode())


# -- validation against the SDK's types -----------------------------------------------------------------

_FORBID = pydantic.ConfigDict(extra="forbid")  # the live API refuses unknown parameters too


def _adapter(shape: Any) -> pydantic.TypeAdapter[Any]:
    """A strict validator for one SDK TypedDict; wrapped in a list, as pydantic takes a config only that way."""
    return pydantic.TypeAdapter(list[shape], config=_FORBID)


def _literals(annotation: Any) -> set[str]:
    if typing_extensions.get_origin(annotation) is typing.Literal:
        return {str(v) for v in typing_extensions.get_args(annotation)}
    return set().union(*(_literals(a) for a in typing_extensions.get_args(annotation)))


def _members(annotation: Any) -> list[type]:
    """The TypedDicts inside ``List[Union[...]]`` or ``Iterable[Union[...]]``."""
    (union,) = typing_extensions.get_args(annotation)
    return list(typing_extensions.get_args(union))


@functools.cache
def _by_type(field_name: str) -> dict[str, list[pydantic.TypeAdapter[Any]]]:
    """For ``input`` items or ``tools``: the SDK shapes each ``type`` value may take, as strict validators."""
    hints = typing_extensions.get_type_hints(response_create_params.ResponseCreateParamsBase)
    annotation = hints[field_name]
    if field_name == "input":  # Union[str, List[Union[...]]]
        annotation = next(a for a in typing_extensions.get_args(annotation) if a is not str)
    shapes: dict[str, list[pydantic.TypeAdapter[Any]]] = {}
    for member in _members(annotation):
        kinds = _literals(typing_extensions.get_type_hints(member, include_extras=True).get("type"))
        for kind in kinds:
            shapes.setdefault(kind, []).append(_adapter(member))
    return shapes


@functools.cache
def _top_level(stream: bool) -> pydantic.TypeAdapter[Any]:
    params = response_create_params
    shape = params.ResponseCreateParamsStreaming if stream else params.ResponseCreateParamsNonStreaming
    return _adapter(shape)


def _where(prefix: str, loc: Iterable[int | str]) -> str:
    """A pydantic location as a parameter path, without the union-branch names pydantic puts in it."""
    path = prefix
    for step in loc:
        if isinstance(step, int):
            path += f"[{step}]"
        elif step.isidentifier() and step.islower() and step not in ("str", "int", "float", "bool", "list", "dict"):
            path += f".{step}" if path else step
    return path


def _refusal(error: pydantic.ValidationError, where: str, skip: int = 0) -> Refused:
    """The deepest complaint names the problem best (union branches add shallow ones)."""
    first = max(error.errors(), key=lambda e: len(e["loc"]))
    path = _where(where, first["loc"][skip:])
    return Refused(400, f"Invalid '{path}': {first['msg']}.", "invalid_value", path)


def _drain(value: Any, where: str) -> None:
    """Pydantic checks ``Iterable[...]`` fields lazily; walking them makes the check happen now."""
    if isinstance(value, dict):
        for key, inner in value.items():
            _drain(inner, f"{where}.{key}" if where else str(key))
    elif isinstance(value, Iterator):
        try:
            value = list(value)
        except pydantic.ValidationError as error:
            raise _refusal(error, where) from None
        _drain(value, where)
    elif isinstance(value, list | tuple):
        for index, inner in enumerate(value):
            _drain(inner, f"{where}[{index}]")


def _check(adapters: list[pydantic.TypeAdapter[Any]], value: Any, where: str) -> None:
    """``value`` must fit one of the shapes; otherwise name the problem in the closest one."""
    failures: list[pydantic.ValidationError | Refused] = []
    for adapter in adapters:
        try:
            (checked,) = adapter.validate_python([value])
            _drain(checked, where)
            return
        except pydantic.ValidationError as error:
            failures.append(error)
        except Refused as refused:
            failures.append(refused)
    best = min(failures, key=lambda e: e.error_count() if isinstance(e, pydantic.ValidationError) else 1)
    raise best if isinstance(best, Refused) else _refusal(best, where, skip=1)


def validate_request(body: Any) -> dict[str, Any]:
    """Check a ``/v1/responses`` body against the installed SDK's ``ResponseCreateParams``; raise ``Refused``.

    One deliberate allowance: the SDK marks a reasoning item's ``id`` as required, but with ``store: false`` the
    live API looks such ids up and fails ("Item ... not found"), and the Codex CLI never sends one; a missing
    ``id`` is filled with a placeholder for the type check only. And ``client_metadata``, which Codex CLI sends on
    every request and the live API takes, is not in the SDK's types yet; nor is the ``id`` it gives input messages.
    """
    if not isinstance(body, dict):
        raise Refused(400, "The request body must be a JSON object.", "invalid_json")
    rest = {k: v for k, v in body.items() if k not in ("input", "tools", "client_metadata")}
    _check([_top_level(body.get("stream") is True)], rest, "")
    items = body.get("input")
    if isinstance(items, list):
        shapes = _by_type("input")
        for index, item in enumerate(items):
            kind = item.get("type", "message") if isinstance(item, dict) else None
            if not isinstance(kind, str) or kind not in shapes:
                raise Refused(400, f"Invalid value: {kind!r}. Supported values are item types.", "invalid_value",
                              f"input[{index}].type")  # fmt: skip
            if kind == "reasoning" and "id" not in item:
                item = {**item, "id": "rs_placeholder"}
            if kind == "message" and item.get("role") != "assistant":  # Codex ids its input messages too
                item = {k: v for k, v in item.items() if k != "id"}
            _check(shapes[kind], item, f"input[{index}]")
    elif not isinstance(items, str):
        raise Refused(400, "Missing required parameter: 'input'.", "missing_required_parameter", "input")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise Refused(400, "Invalid type for 'tools': expected an array.", "invalid_type", "tools")
        shapes = _by_type("tools")
        for index, tool in enumerate(tools):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if not isinstance(kind, str) or kind not in shapes:
                raise Refused(400, f"Invalid value: {kind!r}.", "invalid_value", f"tools[{index}].type")
            _check(shapes[kind], tool, f"tools[{index}]")
    if "model" not in body:
        raise Refused(400, "Missing required parameter: 'model'.", "missing_required_parameter", "model")
    return body


def _check_semantics(state: ResponsesUpstream, body: dict[str, Any]) -> None:
    """What the live API refuses beyond the types."""
    model = body["model"]
    if model not in state.models:
        raise Refused(404, f"The model `{model}` does not exist or you do not have access to it.", "model_not_found")
    if body.get("previous_response_id"):
        raise Refused(400, f"Previous response with id '{body['previous_response_id']}' not found.",
                      "previous_response_not_found", "previous_response_id")  # fmt: skip
    limit = body.get("max_output_tokens")
    if limit is not None and limit < 16:
        raise Refused(400, f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, "
                      f"but got {limit} instead.", "integer_below_min_value", "max_output_tokens")  # fmt: skip
    if model in NON_REASONING:
        if "reasoning.encrypted_content" in (body.get("include") or []):
            raise Refused(400, "Encrypted content is not supported with this model.", None, "include")
        if (body.get("reasoning") or {}).get("effort") is not None:
            raise Refused(400, "Unsupported parameter: 'reasoning.effort' is not supported with this model.",
                          "unsupported_parameter", "reasoning.effort")  # fmt: skip
    names = {t.get("name") for t in body.get("tools") or [] if t.get("type") == "function"}
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name") not in names:
        raise Refused(400, "Tool choice 'function' not found in 'tools' parameter.", None, "tool_choice")
    items = body["input"] if isinstance(body["input"], list) else []
    stored = body.get("store") is not False
    calls: set[str] = set()
    answered: set[str] = set()
    for index, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "function_call":
            calls.add(item["call_id"])
        elif kind == "function_call_output":
            if item.get("call_id") not in calls:
                raise Refused(400, f"No tool call found for function call output with call_id {item.get('call_id')}.",
                              None, f"input[{index}]")  # fmt: skip
            answered.add(item["call_id"])
        elif kind in ("reasoning", "item_reference") and not stored and item.get("id"):
            raise Refused(404, f"Item with id '{item['id']}' not found. Items are not persisted when `store` is set "
                          "to false. Try again with `store` set to true, or remove this item from your input.",
                          None, "input")  # fmt: skip
        if kind == "reasoning":
            secret = item.get("encrypted_content")
            if secret is None and not stored:
                raise Refused(400, "A reasoning item needs its encrypted_content when `store` is false.", None,
                              f"input[{index}]")  # fmt: skip
            if secret is not None and secret not in state.issued:
                raise Refused(400, f"The encrypted content for input[{index}] could not be verified.",
                              "invalid_encrypted_content", f"input[{index}].encrypted_content")  # fmt: skip
    unanswered = [c for c in calls if c not in answered]
    if unanswered:
        raise Refused(400, f"No tool output found for function call {unanswered[0]}.", None, "input")


# -- the answer -----------------------------------------------------------------------------------------


def _words(value: Any) -> int:
    return len(orjson.dumps(value).split()) if not isinstance(value, str) else len(value.split())


def _last_user_text(body: dict[str, Any]) -> str:
    items = body["input"]
    if isinstance(items, str):
        return items
    for item in reversed(items):
        if item.get("type", "message") == "message" and item.get("role") == "user":
            content = item["content"]
            if isinstance(content, str):
                return content
            return " ".join(p["text"] for p in content if p.get("type") == "input_text")
    return ""


def _arguments(tool: dict[str, Any], text: str) -> str:
    """Arguments for the tool: the user's words in its first string property."""
    properties = (tool.get("parameters") or {}).get("properties") or {}
    name = next((k for k, v in properties.items() if v.get("type") == "string"), None)
    return orjson.dumps({name: text} if name else {}).decode()


def _call_target(body: dict[str, Any]) -> dict[str, Any] | None:
    tools: list[dict[str, Any]] = [t for t in body.get("tools") or [] if t.get("type") == "function"]
    choice = body.get("tool_choice", "auto")
    items = body["input"]
    # Once a tool has answered, the fake replies in text (a follow-up user turn may come after the output).
    answered = isinstance(items, list) and any(item.get("type") == "function_call_output" for item in items)
    if not tools or choice == "none" or answered:
        return None
    if isinstance(choice, dict):
        return next(t for t in tools if t["name"] == choice.get("name"))
    return tools[0]


@dataclass
class Answer:
    """One response in its parts, for both the whole body and the stream."""

    id: str
    body: dict[str, Any]
    reasoning: dict[str, Any] | None
    message: dict[str, Any] | None
    call: dict[str, Any] | None
    status: str
    usage: dict[str, Any]

    @property
    def output(self) -> list[dict[str, Any]]:
        return [item for item in (self.reasoning, self.message, self.call) if item is not None]

    def document(self, status: str | None = None, output: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The Response object, echoing the request's settings as the live API does."""
        body, status = self.body, status or self.status
        effort = (body.get("reasoning") or {}).get("effort")
        final = status in ("completed", "incomplete")
        return {
            "id": self.id, "object": "response", "created_at": 1_760_000_000, "status": status,
            "background": False, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None, "model": body["model"],
            "output": self.output if output is None else output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": None,
            "prompt_cache_key": None,
            "reasoning": {"effort": effort, "summary": None} if effort is not None else {"effort": None,
                                                                                          "summary": None},
            "safety_identifier": None, "service_tier": "default", "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0), "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools", []), "top_logprobs": 0,
            "top_p": body.get("top_p", 1.0), "truncation": "disabled",
            "usage": self.usage if final else None, "user": None, "metadata": {},
        }  # fmt: skip


def _answer(state: ResponsesUpstream, body: dict[str, Any]) -> Answer:
    text = _last_user_text(body)
    reasoning = message = call = None
    thought = 0
    effort = (body.get("reasoning") or {}).get("effort")
    if effort not in (None, "none"):
        summary = f"Thinking about: {text}"
        thought = len(summary.split())
        reasoning = {"id": f"rs_{uuid.uuid4().hex}", "type": "reasoning",
                     "summary": [{"type": "summary_text", "text": summary}]}  # fmt: skip
        if "reasoning.encrypted_content" in (body.get("include") or []):
            secret = "gAAAAAB" + base64.urlsafe_b64encode(uuid.uuid4().bytes * 2).decode()
            state.issued.add(secret)
            reasoning["encrypted_content"] = secret
    status = "completed"
    tool = _call_target(body)
    if tool is not None:
        call = {"id": f"fc_{uuid.uuid4().hex}", "type": "function_call", "status": "completed",
                "call_id": f"call_{uuid.uuid4().hex[:24]}", "name": tool["name"],
                "arguments": _arguments(tool, text)}  # fmt: skip
        written = _words(call["arguments"])
    else:
        words = f"echo: {text}".split()
        limit = body.get("max_output_tokens")
        if limit is not None and len(words) + thought > limit:
            words, status = words[: max(0, limit - thought)], "incomplete"
        reply = " ".join(words)
        message = {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant", "status": status,
                   "content": [{"type": "output_text", "text": reply, "annotations": [], "logprobs": []}]}  # fmt: skip
        written = len(words)
    prompt = _words(body["input"]) + _words(body.get("instructions") or "")
    usage = {
        "input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": written + thought, "output_tokens_details": {"reasoning_tokens": thought},
        "total_tokens": prompt + written + thought,
    }  # fmt: skip
    return Answer(f"resp_{uuid.uuid4().hex}", body, reasoning, message, call, status, usage)


# -- the stream -----------------------------------------------------------------------------------------


def _pieces(text: str, count: int) -> list[str]:
    """``text`` in about ``count`` pieces that join back to it exactly."""
    size = max(1, -(-len(text) // max(1, count)))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _events(answer: Answer, pieces: int) -> list[dict[str, Any]]:
    """The live API's event sequence for this answer (without sequence numbers)."""
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": answer.document("in_progress", [])},
        {"type": "response.in_progress", "response": answer.document("in_progress", [])},
    ]
    for index, item in enumerate(answer.output):
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "reasoning":
            events.append({"type": "response.output_item.added", "output_index": index,
                           "item": {**item, "summary": [], "encrypted_content": None}})  # fmt: skip
            for summary_index, part in enumerate(item["summary"]):
                part_where = {**where, "summary_index": summary_index}
                events.append({"type": "response.reasoning_summary_part.added", **part_where,
                               "part": {"type": "summary_text", "text": ""}})  # fmt: skip
                events += [{"type": "response.reasoning_summary_text.delta", **part_where, "delta": p}
                           for p in _pieces(part["text"], pieces)]  # fmt: skip
                events.append({"type": "response.reasoning_summary_text.done", **part_where, "text": part["text"]})
                events.append({"type": "response.reasoning_summary_part.done", **part_where, "part": part})
        elif item["type"] == "message":
            text = item["content"][0]["text"]
            empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append({"type": "response.output_item.added", "output_index": index,
                           "item": {**item, "status": "in_progress", "content": []}})  # fmt: skip
            events.append({"type": "response.content_part.added", **where, "content_index": 0, "part": empty})
            events += [{"type": "response.output_text.delta", **where, "content_index": 0, "delta": p, "logprobs": []}
                       for p in _pieces(text, pieces)]  # fmt: skip
            events.append({"type": "response.output_text.done", **where, "content_index": 0, "text": text,
                           "logprobs": []})  # fmt: skip
            events.append({"type": "response.content_part.done", **where, "content_index": 0,
                           "part": item["content"][0]})  # fmt: skip
        else:
            events.append({"type": "response.output_item.added", "output_index": index,
                           "item": {**item, "status": "in_progress", "arguments": ""}})  # fmt: skip
            events += [{"type": "response.function_call_arguments.delta", **where, "delta": p}
                       for p in _pieces(item["arguments"], 3)]  # fmt: skip
            events.append({"type": "response.function_call_arguments.done", **where, "arguments": item["arguments"]})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    events.append({"type": f"response.{answer.status}", "response": answer.document()})
    return events


async def _stream(request: web.Request, answer: Answer, pieces: int, fault: Fault | None) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for sequence, event in enumerate(_events(answer, pieces)):
        if fault is not None and fault.drop_after is not None and sequence >= fault.drop_after:
            assert request.transport is not None
            request.transport.abort()  # the provider dies mid-stream: no terminal event
            return response
        data = orjson.dumps({**event, "sequence_number": sequence})
        await response.write(b"event: " + event["type"].encode() + b"\ndata: " + data + b"\n\n")
    await response.write_eof()
    return response


async def _responses(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Refused(400, "We could not parse the JSON body of your request.", "invalid_json").response()
    state.received.append(Received(dict(request.headers), body))
    key = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if key not in state.keys:
        return Refused(401, f"Incorrect API key provided: {key or '(none)'}.", "invalid_api_key").response()
    fault = state.faults.popleft() if state.faults else None
    if fault is not None and fault.status is not None:
        document = error_body(fault.status, fault.message, "fault")
        return web.Response(status=fault.status, body=orjson.dumps(document), headers=fault.headers,
                            content_type="application/json")  # fmt: skip
    try:
        validate_request(body)
        _check_semantics(state, body)
    except Refused as refused:
        return refused.response()
    except (AttributeError, TypeError, KeyError, IndexError, ValueError):  # the live API's typed parser refuses it
        return Refused(400, "We could not parse the JSON body of your request.", "invalid_json").response()
    answer = _answer(state, body)
    if body.get("stream") is True:
        return await _stream(request, answer, state.text_pieces, fault)
    return web.Response(body=orjson.dumps(answer.document()), content_type="application/json")


def create_responses_app(state: ResponsesUpstream) -> web.Application:
    app = web.Application()
    app[STATE] = state
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/responses", _responses)
    return app


async def start_responses(
    aiohttp_server: Callable[..., Awaitable[TestServer]], state: ResponsesUpstream | None = None
) -> tuple[ResponsesUpstream, str]:
    """Serve the fake on loopback; returns its state and its base URL (``.../v1``)."""
    state = state or ResponsesUpstream()
    server = await aiohttp_server(create_responses_app(state))
    return state, str(server.make_url("/v1"))
