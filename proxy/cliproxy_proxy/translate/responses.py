"""OpenAI Responses (``POST /v1/responses``) as a canonical codec.

The Responses API is item-based: a conversation is a flat list of messages, reasoning items, function calls and
their outputs, and a stream opens and closes each output item with its own events. Everything here is stateless:
``previous_response_id`` and stored conversations cannot cross into another format, and reasoning round-trips
through ``encrypted_content`` (``store: false``) instead of server-side item ids.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import error_body
from . import fields
from .canonical import (
    SSE_COMMENT,
    USAGE_MARKERS,
    Event,
    Finish,
    FinishReason,
    Image,
    JsonOutput,
    Message,
    MessageStart,
    Part,
    Reasoning,
    Request,
    Response,
    StreamEnd,
    StreamError,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolResult,
    TranslationError,
    Usage,
    qualified,
    restore_namespace,
    usage_object,
)
from .codec import CodecBase
from .openai_chat import encode_response_format

#: Effort levels the Responses API names; ``none`` is left out on the way up (older reasoning models reject it).
_EFFORT_LEVELS = frozenset({"minimal", "low", "medium", "high", "xhigh", "max"})
_BUDGETS = (("low", 1024), ("medium", 8192))
#: OpenAI's encrypted reasoning is a Fernet token (version byte 0x80, base64 "gAAAAA"); any other signature
#: belongs to another provider (Anthropic, Gemini) and would fail to decrypt with a 400.
_OPENAI_SIGNATURE = re.compile(r"^gAAAAA")
#: Models that reason by default, so their reasoning should come back encrypted; asking any other model for
#: ``reasoning.encrypted_content`` is a 400 ("Encrypted content is not supported with this model").
_REASONING_MODEL = re.compile(r"^(?!.*-chat)(.*/)?(o\d|gpt-5|.*codex)", re.IGNORECASE)
_MIN_OUTPUT_TOKENS = 16  # the API rejects max_output_tokens below this
_INCOMPLETE: dict[str, FinishReason] = {"max_output_tokens": "length", "content_filter": "content_filter"}
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a namespace or hosted tool type: safe in a function name or header
_STATEFUL = "is stateful (stored on OpenAI's side) and cannot be translated"


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# -- decoding a client's request ------------------------------------------------------------------------


def _image(url: str) -> Image:
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        return Image(head[5:].split(";")[0] or "image/png", data=data)
    return Image("image/*", url=url)


def _content(content: Any, where: str, images: bool) -> list[Text | Image]:
    """A message's or a function output's content: a string, or a list of text and image parts."""
    if isinstance(content, str):
        return [Text(content)] if content else []
    if not isinstance(content, list):
        raise TranslationError(f"{where}: must be a string or a list of content parts")
    parts: list[Text | Image] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append(Text(fields.text(part.get("text"), f"{where}[{index}].text")))
        elif kind == "refusal":
            parts.append(Text(fields.text(part.get("refusal"), f"{where}[{index}].refusal")))
        elif kind == "input_image" and images:
            url = part.get("image_url")
            if not isinstance(url, str):  # a file_id points at OpenAI's file store
                raise TranslationError(f"{where}[{index}].image_url: only inline or https images can be translated")
            parts.append(_image(url))
        else:
            raise TranslationError(f"{where}[{index}]: content of type {kind!r} cannot be translated")
    return parts


def _texts(content: Any, where: str) -> list[Text]:
    return [p for p in _content(content, where, images=False) if isinstance(p, Text)]


def _assistant(messages: list[Message]) -> Message:
    """The assistant turn being built: reasoning, text and calls are separate items of one turn."""
    if not messages or messages[-1].role != "assistant":
        messages.append(Message("assistant", []))
    return messages[-1]


def _tool_results(messages: list[Message]) -> Message:
    """Outputs of one turn's calls travel together, as one user message of tool results."""
    if not messages or messages[-1].role != "user" or not all(isinstance(p, ToolResult) for p in messages[-1].parts):
        messages.append(Message("user", []))
    return messages[-1]


def _reasoning_text(item: dict[str, Any], where: str = "reasoning") -> str:
    summary = [_part_text(s, f"{where}.summary") for s in fields.array(item.get("summary"), f"{where}.summary")]
    if any(summary):
        return "\n\n".join(summary)
    return "\n\n".join(_part_text(c, f"{where}.content") for c in fields.array(item.get("content"), f"{where}.content"))


def _part_text(part: Any, where: str) -> str:
    return fields.text(part.get("text"), f"{where}[].text") if isinstance(part, dict) else ""


def _decode_item(item: Any, where: str, system: list[Text], messages: list[Message]) -> None:
    if not isinstance(item, dict):
        raise TranslationError(f"{where}: must be an object")
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role in ("system", "developer"):
            system.extend(_texts(item.get("content"), f"{where}.content"))
        elif role == "user":
            messages.append(Message("user", list(_content(item.get("content"), f"{where}.content", images=True))))
        elif role == "assistant":
            _assistant(messages).parts.extend(_texts(item.get("content"), f"{where}.content"))
        else:
            raise TranslationError(f"{where}.role: {role!r} is not a message role")
    elif kind == "function_call":
        name = fields.text(item.get("name"), f"{where}.name")
        namespace = fields.optional_text(item.get("namespace"), f"{where}.namespace")
        if namespace:
            name = qualified(namespace, name)  # as the namespace's functions were declared to the provider
        arguments = fields.text(item.get("arguments"), f"{where}.arguments") or "{}"
        call = ToolCall(fields.text(item.get("call_id"), f"{where}.call_id"), name, arguments)
        _assistant(messages).parts.append(call)
    elif kind == "function_call_output":
        content = _content(item.get("output"), f"{where}.output", images=True)
        call_id = fields.text(item.get("call_id"), f"{where}.call_id")
        _tool_results(messages).parts.append(ToolResult(call_id, content))
    elif kind == "reasoning":
        text, signature = _reasoning_text(item, where), item.get("encrypted_content")
        if text or signature:  # an item with neither is an id only OpenAI's store could resolve
            _assistant(messages).parts.append(Thinking(text, signature if isinstance(signature, str) else None))
    elif kind == "item_reference":
        raise TranslationError(f"{where}: an item_reference {_STATEFUL}")
    else:
        raise TranslationError(f"{where}: items of type {kind!r} cannot be translated")


def _decode_input(body: dict[str, Any]) -> tuple[list[Text], list[Message]]:
    system: list[Text] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        system.append(Text(instructions))
    elif instructions is not None and not isinstance(instructions, str):
        raise TranslationError("instructions: must be a string")
    items = body.get("input")
    if isinstance(items, str):
        return system, [Message("user", [Text(items)])]
    if not isinstance(items, list) or not items:
        raise TranslationError("input: a string or a non-empty list of items is required")
    messages: list[Message] = []
    for index, item in enumerate(items):
        _decode_item(item, f"input[{index}]", system, messages)
    return system, messages


def _function(tool: dict[str, Any], where: str, namespace: str | None = None) -> Tool:
    """A function tool (``strict`` has no equivalent elsewhere), named within its namespace when it has one."""
    parameters = tool.get("parameters") or {"type": "object", "properties": {}}
    name = fields.text(tool.get("name"), f"{where}.name")
    if namespace is not None:
        name = qualified(namespace, name)
    return Tool(name, fields.optional_text(tool.get("description"), f"{where}.description"),
                fields.json_object(parameters, f"{where}.parameters"), namespace)  # fmt: skip


def _decode_tools(tools: Any) -> tuple[list[Tool], list[str]]:
    """Function tools, namespaces' functions flattened (the client runs them all); and the hosted tools' types."""
    decoded, hosted = [], []
    for index, tool in enumerate(fields.array(tools, "tools")):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            decoded.append(_function(tool, f"tools[{index}]"))
        elif kind == "namespace":
            namespace, inner = tool.get("name"), tool.get("tools")
            if not isinstance(namespace, str) or not _NAME.fullmatch(namespace) or not isinstance(inner, list):
                raise TranslationError(f"tools[{index}]: a namespace needs a name and a list of tools")
            for number, function in enumerate(inner):
                if not isinstance(function, dict) or function.get("type") != "function":
                    raise TranslationError(f"tools[{index}].tools[{number}]: only function tools can be translated")
                decoded.append(_function(function, f"tools[{index}].tools[{number}]", namespace))
        elif isinstance(kind, str) and _NAME.fullmatch(kind):
            hosted.append(kind)  # run on OpenAI's side: what becomes of it is the proxy's hosted-tools policy
        else:
            raise TranslationError(f"tools[{index}]: a tool needs a type")
    return decoded, hosted


def _decode_tool_choice(choice: Any) -> ToolChoice | None:
    if choice is None or choice in ("auto", "none", "required"):
        return choice  # type: ignore[no-any-return]
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return str(choice["name"])
    raise TranslationError("tool_choice: must be auto, none, required or a named function")


def _decode_text_format(text: Any) -> JsonOutput | None:
    form = text.get("format") if isinstance(text, dict) else None
    kind = form.get("type", "text") if isinstance(form, dict) else "text"
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonOutput()
    assert isinstance(form, dict)
    if kind != "json_schema" or not isinstance(form.get("schema"), dict):
        raise TranslationError("text.format: must be text, json_object or json_schema with a schema object")
    schema = fields.json_object(form["schema"], "text.format.schema")
    name = fields.text(form.get("name"), "text.format.name") or "response"
    return JsonOutput(schema, name, fields.flag(form.get("strict"), "text.format.strict"))


def _check_stateless(body: dict[str, Any]) -> None:
    for key in ("previous_response_id", "conversation", "prompt"):
        if body.get(key):
            raise TranslationError(f"{key}: {_STATEFUL}")
    if body.get("background") is True:
        raise TranslationError(f"background: a background response {_STATEFUL}")


# -- encoding for a provider ----------------------------------------------------------------------------


def _effort(reasoning: Reasoning | None) -> str | None:
    if reasoning is None:
        return None
    if reasoning.effort is not None:
        if reasoning.effort == "none":
            return None
        if reasoning.effort not in _EFFORT_LEVELS:
            raise TranslationError(f"reasoning.effort: {reasoning.effort!r} is not an OpenAI effort level")
        return reasoning.effort
    if not reasoning.budget:
        return None  # budget 0 turns thinking off: leave the model's default rather than guess a level
    return next((name for name, ceiling in _BUDGETS if reasoning.budget <= ceiling), "high")


def _image_part(image: Image) -> dict[str, Any]:
    url = image.url or f"data:{image.media_type};base64,{image.data}"
    return {"type": "input_image", "image_url": url, "detail": "auto"}


def _input_part(part: Text | Image) -> dict[str, Any]:
    return {"type": "input_text", "text": part.text} if isinstance(part, Text) else _image_part(part)


def _signed(part: Part) -> bool:
    return isinstance(part, Thinking) and part.signature is not None and bool(_OPENAI_SIGNATURE.match(part.signature))


def _tool_output(result: ToolResult) -> str | list[dict[str, Any]]:
    prefix = "Error: " if result.is_error else ""
    if not any(isinstance(p, Image) for p in result.content):
        return prefix + "\n".join(p.text for p in result.content if isinstance(p, Text))
    parts = [_input_part(p) for p in result.content]  # function outputs take images as input_image parts
    return [{"type": "input_text", "text": prefix}, *parts] if prefix else parts


def _encode_user(message: Message, where: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    content: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, ToolResult):
            if content:  # keep the order the parts came in
                items.append({"type": "message", "role": "user", "content": content})
                content = []
            items.append({"type": "function_call_output", "call_id": part.call_id, "output": _tool_output(part)})
        elif isinstance(part, Text | Image):
            content.append(_input_part(part))
        else:
            raise TranslationError(f"{where}: a user message cannot carry {type(part).__name__} parts")
    if content:
        items.append({"type": "message", "role": "user", "content": content})
    return items


def _encode_assistant(message: Message, where: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    text: list[str] = []

    def flush() -> None:
        # a plain string: the typed output_text form would need the original message id and status
        if text:
            items.append({"type": "message", "role": "assistant", "content": "".join(text)})
            text.clear()

    for part in message.parts:
        if isinstance(part, Text):
            text.append(part.text)
            continue
        flush()
        if isinstance(part, ToolCall):
            items.append({"type": "function_call", "call_id": part.id, "name": part.name, "arguments": part.arguments})
        elif isinstance(part, Thinking):
            # Only OpenAI's own encrypted reasoning can go back: with store=false a reasoning item is nothing
            # without it, and another provider's signature fails to decrypt. The item id is left out on purpose:
            # unstored ids are looked up and answered with 404 "Item not found" (the Codex CLI omits it too).
            if _signed(part):
                summary = [{"type": "summary_text", "text": part.text}] if part.text else []
                items.append({"type": "reasoning", "summary": summary, "encrypted_content": part.signature})
        else:
            raise TranslationError(f"{where}: an assistant message cannot carry {type(part).__name__} parts")
    flush()
    return items


def _encode_tool(tool: Tool) -> dict[str, Any]:
    # strict mode would demand every property be required and no others allowed: schemas from elsewhere aren't
    encoded: dict[str, Any] = {"type": "function", "name": tool.name, "parameters": tool.parameters, "strict": False}
    if tool.description is not None:
        encoded["description"] = tool.description
    return encoded


def _encode_tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    return choice if choice in ("auto", "none", "required") else {"type": "function", "name": choice}


def _wants_encrypted_reasoning(request: Request, effort: str | None) -> bool:
    signed = any(_signed(p) for m in request.messages for p in m.parts)
    return effort is not None or signed or bool(_REASONING_MODEL.search(request.model))


# -- the Response object --------------------------------------------------------------------------------


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str | None) -> dict[str, Any]:
    """An assistant message: complete with its text, or (``None``) just opened, with no content yet."""
    content = [] if text is None else [_text_part(text)]
    return {"id": item_id, "type": "message", "role": "assistant",
            "status": "in_progress" if text is None else "completed", "content": content}  # fmt: skip


def _reasoning_item(item_id: str, text: str, signature: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": item_id, "type": "reasoning",
                            "summary": [{"type": "summary_text", "text": text}] if text else []}  # fmt: skip
    if signature is not None:
        item["encrypted_content"] = signature
    return item


def _call_item(item_id: str, call: ToolCall, status: str = "completed") -> dict[str, Any]:
    item = {"id": item_id, "type": "function_call", "status": status, "call_id": call.id, "name": call.name,
            "arguments": call.arguments}  # fmt: skip
    if call.namespace is not None:
        item["namespace"] = call.namespace
    return item


def _output(parts: list[Part]) -> list[dict[str, Any]]:
    """Canonical parts as output items, in order; consecutive texts form one message."""
    items: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, Text):
            last = items[-1] if items else None
            if last is not None and last["type"] == "message":
                last["content"][0]["text"] += part.text
            else:
                items.append(_message_item(_new_id("msg"), part.text))
        elif isinstance(part, Thinking):
            items.append(_reasoning_item(_new_id("rs"), part.text, part.signature))
        elif isinstance(part, ToolCall):
            items.append(_call_item(_new_id("fc"), part))
    return items


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input, "input_tokens_details": {"cached_tokens": usage.cached, "cache_write_tokens": 0},
        "output_tokens": usage.output, "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.total,
    }  # fmt: skip


def _decode_usage(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    input_details = usage.get("input_tokens_details") or {}
    output_details = usage.get("output_tokens_details") or {}
    return Usage(
        int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0),
        int(input_details.get("cached_tokens") or 0), int(output_details.get("reasoning_tokens") or 0),
    )  # fmt: skip


def _status(finish: FinishReason | None) -> tuple[str, dict[str, str] | None]:
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _echo(request: Request | None) -> dict[str, Any]:
    """The request settings a Response object repeats back (defaults when the request is not at hand)."""
    if request is None:
        return {"instructions": None, "tools": [], "tool_choice": "auto", "parallel_tool_calls": True}
    effort = request.reasoning.effort if request.reasoning is not None else None
    tools = [{"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters,
              "strict": False} for t in request.tools]  # fmt: skip
    return {
        "instructions": "\n\n".join(t.text for t in request.system) or None,
        "tools": tools,
        "tool_choice": _encode_tool_choice(request.tool_choice) if request.tool_choice is not None else "auto",
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "max_output_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "reasoning": {"effort": effort, "summary": None} if effort in _EFFORT_LEVELS else None,
    }


def _response_object(
    response_id: str, model: str, created_at: int, status: str, output: list[dict[str, Any]],
    usage: Usage | None, request: Request | None = None, incomplete: dict[str, str] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    return {
        "id": response_id, "object": "response", "created_at": created_at, "status": status,
        "error": error, "incomplete_details": incomplete, "model": model, "output": output,
        "usage": _usage(usage) if usage is not None else None, "metadata": {},
        "text": {"format": {"type": "text"}}, "truncation": "disabled", "store": False,
        **_echo(request),
    }  # fmt: skip


def _response_id(upstream_id: str) -> str:
    if not upstream_id:
        return _new_id("resp")
    return upstream_id if upstream_id.startswith("resp_") else f"resp_{upstream_id}"


# -- the codec ------------------------------------------------------------------------------------------


class ResponsesCodec(CodecBase):
    name = "openai-responses"
    stream_end = StreamEnd(rb'"type"\s*:\s*"(?:response\.(?:completed|incomplete|failed)|error)"')
    keepalive = SSE_COMMENT
    vendor_headers: tuple[str, ...] = ("openai-beta",)
    context_window_markers = (b"context_length_exceeded",)

    usage_markers = USAGE_MARKERS

    def usage_of(self, document: Any) -> Usage | None:
        """A response's usage, or a stream's (in its ``response.completed`` event's response)."""
        usage = usage_object(document, "response")
        return _decode_usage(usage) if usage is not None else None

    # -- inbound ------------------------------------------------------------------------------------------

    def decode_request(self, body: dict[str, Any]) -> Request:
        _check_stateless(body)
        system, messages = _decode_input(body)
        effort = fields.mapping(body.get("reasoning"), "reasoning").get("effort")
        tools, hosted = _decode_tools(body.get("tools"))
        return Request(
            model=str(body.get("model", "")),
            messages=messages,
            system=system,
            tools=tools,
            tool_choice=_decode_tool_choice(body.get("tool_choice")),
            max_tokens=fields.integer(body.get("max_output_tokens"), "max_output_tokens"),
            temperature=fields.number(body.get("temperature"), "temperature"),
            top_p=fields.number(body.get("top_p"), "top_p"),
            stream=body.get("stream") is True,
            reasoning=Reasoning(effort=effort) if isinstance(effort, str) else None,
            parallel_tool_calls=fields.flag(body.get("parallel_tool_calls"), "parallel_tool_calls"),
            stream_usage=True,  # a Responses stream always ends with the usage in response.completed
            hosted_tools=hosted,
            output=_decode_text_format(body.get("text")),
        )

    def encode_response(self, response: Response) -> bytes:
        status, incomplete = _status(response.finish)
        output = _output(response.parts)
        document = _response_object(_response_id(response.id), response.model, int(time.time()), status, output,
                                    response.usage, incomplete=incomplete)  # fmt: skip
        return orjson.dumps(document)

    def stream_encoder(self, request: Request) -> _StreamEncoder:
        return _StreamEncoder(request)

    def encode_error(self, status: int, message: str, code: str | None) -> bytes:
        return orjson.dumps(error_body(status, message, code))

    # -- upstream -----------------------------------------------------------------------------------------

    def upstream_path(self, model: str, stream: bool) -> str:
        return "/responses"

    def encode_request(self, request: Request) -> bytes:
        if request.stop:
            raise TranslationError("stop: the Responses API has no stop sequences")
        items: list[dict[str, Any]] = []
        for index, message in enumerate(request.messages):
            encode = _encode_assistant if message.role == "assistant" else _encode_user
            items.extend(encode(message, f"messages[{index}]"))
        body: dict[str, Any] = {"model": request.model, "input": items, "store": False}
        if request.system:
            body["instructions"] = "\n\n".join(t.text for t in request.system)
        if request.tools:
            body["tools"] = [_encode_tool(t) for t in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = _encode_tool_choice(request.tool_choice)
        if request.output is not None:
            form = encode_response_format(request.output)
            body["text"] = {"format": {"type": form["type"], **form.get("json_schema", {})}}
        if request.max_tokens is not None:
            body["max_output_tokens"] = max(request.max_tokens, _MIN_OUTPUT_TOKENS)
        for key, value in (("temperature", request.temperature), ("top_p", request.top_p),
                           ("parallel_tool_calls", request.parallel_tool_calls)):  # fmt: skip
            if value is not None:
                body[key] = value
        effort = _effort(request.reasoning)
        if effort is not None:
            body["reasoning"] = {"effort": effort}
        if _wants_encrypted_reasoning(request, effort):
            body["include"] = ["reasoning.encrypted_content"]  # so reasoning round-trips without store
        if request.stream:
            body["stream"] = True
        return orjson.dumps(body)

    def decode_response(self, body: dict[str, Any]) -> Response:
        parts: list[Part] = []
        for item in body.get("output") or []:
            parts.extend(_item_parts(item))
        return Response(str(body.get("id", "")), str(body.get("model", "")), parts,
                        _finish_of(body, any(isinstance(p, ToolCall) for p in parts)),
                        _decode_usage(body.get("usage")))  # fmt: skip

    def event_decoder(self) -> _StreamDecoder:
        return _StreamDecoder()


def _item_parts(item: Any) -> list[Part]:
    if not isinstance(item, dict):
        return []
    kind = item.get("type")
    if kind == "reasoning":
        text, signature = _reasoning_text(item), item.get("encrypted_content")
        return [Thinking(text, signature if isinstance(signature, str) else None)] if text or signature else []
    if kind == "message":
        texts = [str(c.get("text") or c.get("refusal") or "") for c in item.get("content") or [] if isinstance(c, dict)]
        return [Text(t) for t in texts if t]
    if kind == "function_call":
        return [ToolCall(str(item.get("call_id", "")), str(item.get("name", "")), str(item.get("arguments") or "{}"))]
    return []  # hosted tool calls: never requested by this codec


def _finish_of(response: dict[str, Any], called: bool) -> FinishReason:
    if response.get("status") == "incomplete":
        details = response.get("incomplete_details") or {}
        return _INCOMPLETE.get(str(details.get("reason")), "length")
    return "tool_calls" if called else "stop"


# -- streams --------------------------------------------------------------------------------------------


class _StreamDecoder:
    """Responses events to canonical ones; ``.done`` events only fill in what no delta carried."""

    def __init__(self) -> None:
        self.started = False
        self.calls: dict[str, int] = {}  # item id and "#output index" -> tool index
        self.call_count = 0
        self.with_arguments: set[int] = set()
        self.with_text: set[str] = set()
        self.summary_index: dict[str, int] = {}

    def feed(self, event: str | None, data: bytes) -> list[Event]:
        if not data.strip() or data.strip() == b"[DONE]":
            return []
        chunk = orjson.loads(data)
        kind = chunk.get("type") or event
        events: list[Event] = []
        response = chunk.get("response") if isinstance(chunk.get("response"), dict) else {}
        if not self.started and kind != "error":
            self.started = True
            events.append(MessageStart(str(response.get("id", "")), str(response.get("model", ""))))
        if kind == "response.output_text.delta" and chunk.get("delta"):
            self.with_text.add(str(chunk.get("item_id")))
            events.append(TextDelta(chunk["delta"]))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta") and chunk.get("delta"):
            events.extend(self._thinking(chunk))
        elif kind == "response.output_item.added":
            item = chunk.get("item") or {}
            if item.get("type") == "function_call":
                events.extend(self._call_start(chunk, item))
        elif kind == "response.function_call_arguments.delta" and chunk.get("delta"):
            index = self._call_index(chunk)
            if index is not None:
                self.with_arguments.add(index)
                events.append(ToolCallDelta(index, chunk["delta"]))
        elif kind == "response.output_item.done":
            events.extend(self._item_done(chunk, chunk.get("item") or {}))
        elif kind in ("response.completed", "response.incomplete"):
            finish = _finish_of(response, self.call_count > 0 or any(_is_call(i) for i in response.get("output") or []))
            events.append(Finish(finish, _decode_usage(response.get("usage"))))
        elif kind == "response.failed":
            error = response.get("error") or {}
            events.append(StreamError(502, str(error.get("message") or "The upstream response failed.")))
        elif kind == "error":
            error = chunk.get("error") if isinstance(chunk.get("error"), dict) else chunk
            events.append(StreamError(502, str(error.get("message") or "The upstream stream failed.")))
        return events

    def _thinking(self, chunk: dict[str, Any]) -> list[Event]:
        item_id, index = str(chunk.get("item_id")), int(chunk.get("summary_index", chunk.get("content_index", 0)))
        previous = self.summary_index.get(item_id)
        self.summary_index[item_id] = index
        separator = "\n\n" if previous is not None and index != previous else ""  # summary parts are paragraphs
        return [ThinkingDelta(separator + chunk["delta"])]

    def _call_start(self, chunk: dict[str, Any], item: dict[str, Any]) -> list[Event]:
        index, self.call_count = self.call_count, self.call_count + 1
        if item.get("id"):
            self.calls[str(item["id"])] = index
        self.calls[f"#{chunk.get('output_index')}"] = index
        events: list[Event] = [ToolCallStart(index, str(item.get("call_id", "")), str(item.get("name", "")))]
        if item.get("arguments"):
            self.with_arguments.add(index)
            events.append(ToolCallDelta(index, item["arguments"]))
        return events

    def _call_index(self, chunk: dict[str, Any]) -> int | None:
        index = self.calls.get(str(chunk.get("item_id")))
        return index if index is not None else self.calls.get(f"#{chunk.get('output_index')}")

    def _item_done(self, chunk: dict[str, Any], item: dict[str, Any]) -> list[Event]:
        kind = item.get("type")
        events: list[Event] = []
        if kind == "function_call":
            index = self._call_index({"item_id": item.get("id"), "output_index": chunk.get("output_index")})
            if index is None:
                events.extend(self._call_start(chunk, item))  # a call that arrived whole, with no added event
            elif index not in self.with_arguments and item.get("arguments"):
                self.with_arguments.add(index)
                events.append(ToolCallDelta(index, item["arguments"]))
        elif kind == "message" and str(item.get("id")) not in self.with_text:
            events.extend(TextDelta(p.text) for p in _item_parts(item) if isinstance(p, Text))
        elif kind == "reasoning":
            text = _reasoning_text(item)
            if text and str(item.get("id")) not in self.summary_index:
                events.append(ThinkingDelta(text))
            if isinstance(item.get("encrypted_content"), str):
                events.append(ThinkingDelta("", item["encrypted_content"]))
        return events


def _is_call(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") == "function_call"


@dataclass(slots=True)
class _Open:
    """An output item being streamed."""

    kind: str  # message | reasoning | function_call
    id: str
    index: int
    text: str = ""
    signature: str | None = None
    summary_open: bool = False
    call: ToolCall | None = None


class _StreamEncoder:
    """Canonical events as the Responses event sequence, one output item opened and closed at a time.

    Function calls stay open until something else starts (or the turn finishes), so arguments interleaved
    across parallel calls still land in the right item; the terminal event waits for ``close`` because usage
    may arrive in a later ``Finish``.
    """

    def __init__(self, request: Request) -> None:
        self.request = request
        self.model = request.model
        self.id = _new_id("resp")
        self.created_at = int(time.time())
        self.sequence = 0
        self.started = False
        self.ended = False
        self.output: dict[int, dict[str, Any]] = {}  # finished items by output index
        self.count = 0  # output indexes handed out
        self.current: _Open | None = None  # the open message or reasoning item
        self.calls: dict[int, _Open] = {}  # open function calls by canonical tool index
        self.finish: FinishReason | None = None
        self.usage: Usage | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _response(self, status: str, **extra: Any) -> dict[str, Any]:
        output = [self.output[i] for i in sorted(self.output)]
        return _response_object(self.id, self.model, self.created_at, status, output, extra.pop("usage", None),
                                self.request, **extra)  # fmt: skip

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        response = self._response("in_progress")
        return self._event("response.created", response=response) + self._event(
            "response.in_progress", response=response
        )

    def _open(self, kind: str, prefix: str) -> _Open:
        item = _Open(kind, _new_id(prefix), self.count)
        self.count += 1
        return item

    def _added(self, item: _Open, body: dict[str, Any]) -> bytes:
        return self._event("response.output_item.added", output_index=item.index, item=body)

    def _done(self, item: _Open, body: dict[str, Any]) -> bytes:
        self.output[item.index] = body
        return self._event("response.output_item.done", output_index=item.index, item=body)

    # -- opening and closing items --------------------------------------------------------------------

    def _text_item(self) -> bytes:
        if self.current is not None and self.current.kind == "message":
            return b""
        out = self._close_all()
        item = self.current = self._open("message", "msg")
        return (
            out
            + self._added(item, _message_item(item.id, None))
            + self._event(
                "response.content_part.added",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                part=_text_part(""),
            )
        )

    def _reasoning_item(self) -> bytes:
        if self.current is not None and self.current.kind == "reasoning":
            return b""
        out = self._close_all()
        item = self.current = self._open("reasoning", "rs")
        return out + self._added(item, _reasoning_item(item.id, "", None))

    def _close_current(self) -> bytes:
        item, self.current = self.current, None
        if item is None:
            return b""
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            return (
                self._event("response.output_text.done", **where, content_index=0, text=item.text, logprobs=[])
                + self._event("response.content_part.done", **where, content_index=0, part=_text_part(item.text))
                + self._done(item, _message_item(item.id, item.text))
            )
        out = b""
        if item.summary_open:
            part = {"type": "summary_text", "text": item.text}
            out = self._event("response.reasoning_summary_text.done", **where, summary_index=0, text=item.text)
            out += self._event("response.reasoning_summary_part.done", **where, summary_index=0, part=part)
        return out + self._done(item, _reasoning_item(item.id, item.text, item.signature))

    def _close_calls(self) -> bytes:
        out = []
        for item in sorted(self.calls.values(), key=lambda i: i.index):
            assert item.call is not None
            out.append(self._event("response.function_call_arguments.done", item_id=item.id,
                                   output_index=item.index, arguments=item.call.arguments))  # fmt: skip
            out.append(self._done(item, _call_item(item.id, item.call)))
        self.calls.clear()
        return b"".join(out)

    def _close_all(self) -> bytes:
        return self._close_current() + self._close_calls()

    # -- the StreamEncoder protocol -------------------------------------------------------------------

    def encode(self, event: Event) -> bytes:
        if self.ended:
            return b""
        if isinstance(event, MessageStart) and not self.started:
            self.id = _response_id(event.id)
            self.model = event.model or self.model
        out = self._start()
        if isinstance(event, TextDelta) and event.text:
            out += self._text_item()
            assert self.current is not None
            self.current.text += event.text
            out += self._event("response.output_text.delta", item_id=self.current.id, output_index=self.current.index,
                               content_index=0, delta=event.text, logprobs=[])  # fmt: skip
        elif isinstance(event, ThinkingDelta):
            out += self._thinking(event)
        elif isinstance(event, ToolCallStart):
            out += self._close_current()
            item = self.calls[event.index] = self._open("function_call", "fc")
            item.call = restore_namespace(ToolCall(event.id, event.name, ""), self.request.tools)
            out += self._added(item, _call_item(item.id, item.call, "in_progress"))
        elif isinstance(event, ToolCallDelta) and event.index in self.calls:
            item = self.calls[event.index]
            assert item.call is not None
            item.call.arguments += event.arguments
            out += self._event("response.function_call_arguments.delta", item_id=item.id, output_index=item.index,
                               delta=event.arguments)  # fmt: skip
        elif isinstance(event, Finish):
            self.finish = event.reason or self.finish
            self.usage = event.usage or self.usage
            if event.reason is not None:
                out += self._close_all()
        elif isinstance(event, StreamError):
            self.ended = True
            code = "rate_limit_exceeded" if event.status == 429 else "server_error"
            error = {"code": code, "message": event.message}
            out += self._event("response.failed", response=self._response("failed", error=error, usage=self.usage))
        return out

    def _thinking(self, event: ThinkingDelta) -> bytes:
        if not event.text and event.signature is None:
            return b""
        out = self._reasoning_item()
        item = self.current
        assert item is not None
        if event.text:
            if not item.summary_open:
                item.summary_open = True
                out += self._event("response.reasoning_summary_part.added", item_id=item.id, output_index=item.index,
                                   summary_index=0, part={"type": "summary_text", "text": ""})  # fmt: skip
            item.text += event.text
            out += self._event("response.reasoning_summary_text.delta", item_id=item.id, output_index=item.index,
                               summary_index=0, delta=event.text)  # fmt: skip
        if event.signature is not None:
            item.signature = (item.signature or "") + event.signature
        return out

    def close(self) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        out = self._start() + self._close_all()
        status, incomplete = _status(self.finish)
        response = self._response(status, usage=self.usage or Usage(), incomplete=incomplete)
        return out + self._event(f"response.{status}", response=response)
