"""Anthropic Messages (``POST /v1/messages``) as a canonical codec.

Decisions worth knowing:

* Usage: canonical ``input`` counts every prompt token, as OpenAI's ``prompt_tokens`` does, so Anthropic's
  ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens`` become ``input`` and the cache reads
  become ``cached``; on the way out ``input_tokens`` is ``input - cached`` (cache writes cannot be told apart
  from uncached input any more, so they are counted there).
* Redacted thinking: a ``redacted_thinking`` block becomes ``Thinking("", signature=REDACTED + data)``, so a
  Claude client's history replays it to Claude byte for byte. Like any Claude signature it means nothing to
  another vendor: encoders that replay signatures should skip ones starting with ``REDACTED``.
* Tool arguments that are not a JSON object: a response carries them as ``{"_raw_arguments": text}`` (the
  client sees what the model produced instead of a silent ``{}``); a request refuses them with a 400.
"""

from __future__ import annotations

import mimetypes
import re
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson

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
    reencode,
    thinking_budget,
    usage_object,
)
from .codec import Codec, CodecBase

#: Marks a ``Thinking.signature`` that holds a ``redacted_thinking`` block's data rather than a signature.
#: The ``anthropic-version`` every request carries (a client's own replaces it on a same-format request).
API_VERSION = "2023-06-01"
COUNT_PATH = "/v1/messages/count_tokens"
REDACTED = "redacted_thinking:"
#: Anthropic requires ``max_tokens``; this is what a request without one gets (and the room left for the answer
#: when a thinking budget would otherwise eat all of it).
DEFAULT_MAX_TOKENS = 4096
MIN_THINKING_BUDGET = 1024

_FINISH_IN: dict[str, FinishReason] = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}  # fmt: skip
_FINISH_OUT = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    504: "timeout_error", 529: "overloaded_error",
}  # fmt: skip
_INPUT_COUNTS = frozenset({"input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"})
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_SERVER_TOOL = re.compile(r"[a-z0-9_]{1,64}")  # web_search_20250305...: safe to name in a response header
_ADAPTIVE_EFFORT = "high"  # Anthropic's default effort when the model decides how much to think

# -- decoding: what Anthropic clients send ----------------------------------------------------------------


def _texts(content: Any, where: str) -> list[Text]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Text(content)] if content else []
    if not isinstance(content, list):
        raise TranslationError(f"{where}: must be a string or a list of text blocks")
    texts = []
    for index, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise TranslationError(f"{where}[{index}]: only text blocks are supported here")
        texts.append(Text(fields.text(block.get("text"), f"{where}[{index}].text")))
    return texts


def _image(block: dict[str, Any], where: str) -> Image:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        assert isinstance(source, dict)
        media_type = fields.text(source.get("media_type"), f"{where}.source.media_type", "image/png")
        return Image(media_type, data=fields.text(source.get("data"), f"{where}.source.data"))
    if kind == "url":
        assert isinstance(source, dict)
        url = fields.text(source.get("url"), f"{where}.source.url")
        return Image(mimetypes.guess_type(url)[0] or "image/*", url=url)
    raise TranslationError(f"{where}.source: image source {kind!r} cannot be translated (base64 or url only)")


def _tool_result(block: dict[str, Any], where: str) -> ToolResult:
    content = block.get("content")
    parts: list[Text | Image] = []
    if isinstance(content, list):
        for index, item in enumerate(content):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text":
                parts.append(Text(fields.text(item.get("text"), f"{where}.content[{index}].text")))
            elif kind == "image":
                parts.append(_image(item, f"{where}.content[{index}]"))
            else:
                raise TranslationError(f"{where}.content[{index}]: tool result content {kind!r} cannot be translated")
    else:
        parts.extend(_texts(content, f"{where}.content"))
    return ToolResult(
        fields.text(block.get("tool_use_id"), f"{where}.tool_use_id"), parts, block.get("is_error") is True
    )


def _block(block: Any, role: str, where: str) -> Part | None:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        value = fields.text(block.get("text"), f"{where}.text")
        return Text(value) if value else None
    if kind == "image":
        return _image(block, where)
    if kind in ("tool_use", "thinking", "redacted_thinking") and role != "assistant":
        raise TranslationError(f"{where}: {kind} blocks belong in assistant messages")
    if kind == "tool_use":
        arguments = fields.json_object(block.get("input") or {}, f"{where}.input")
        return ToolCall(fields.text(block.get("id"), f"{where}.id"), fields.text(block.get("name"), f"{where}.name"),
                        _dumps(arguments))  # fmt: skip
    if kind == "thinking":
        signature = fields.text(block.get("signature"), f"{where}.signature")
        return Thinking(fields.text(block.get("thinking"), f"{where}.thinking"), signature or None)
    if kind == "redacted_thinking":
        return Thinking("", REDACTED + fields.text(block.get("data"), f"{where}.data"))
    if kind == "tool_result":
        if role != "user":
            raise TranslationError(f"{where}: tool_result blocks belong in user messages")
        return _tool_result(block, where)
    raise TranslationError(f"{where}: content of type {kind!r} cannot be translated")


def _decode_messages(messages: Any) -> tuple[list[Text], list[Message]]:
    if not isinstance(messages, list) or not messages:
        raise TranslationError("messages: a non-empty list is required")
    system: list[Text] = []
    out: list[Message] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise TranslationError(f"{where}: must be an object")
        role, content = message.get("role"), message.get("content")
        if role == "system":  # newer models take system turns mid-conversation; the canonical model has one system
            system.extend(_texts(content, f"{where}.content"))
            continue
        if role not in ("user", "assistant"):
            raise TranslationError(f"{where}.role: {role!r} is not a Messages role")
        if isinstance(content, str):
            parts: list[Part] = [Text(content)] if content else []
        elif isinstance(content, list):
            decoded = (_block(b, role, f"{where}.content[{i}]") for i, b in enumerate(content))
            parts = [p for p in decoded if p is not None]
        else:
            raise TranslationError(f"{where}.content: must be a string or a list of blocks")
        out.append(Message(role, parts))
    return system, out


def _decode_tools(tools: Any) -> tuple[list[Tool], list[str]]:
    """Custom tools, and the types of the server tools (web_search_...) the proxy's hosted-tools policy judges."""
    decoded, hosted = [], []
    for index, tool in enumerate(fields.array(tools, "tools")):
        kind = tool.get("type") if isinstance(tool, dict) else None
        where = f"tools[{index}]"
        if isinstance(tool, dict) and kind in (None, "custom") and "input_schema" in tool:
            decoded.append(Tool(fields.text(tool.get("name"), f"{where}.name"),
                                fields.optional_text(tool.get("description"), f"{where}.description"),
                                fields.json_object(tool["input_schema"], f"{where}.input_schema")))  # fmt: skip
        elif isinstance(kind, str) and _SERVER_TOOL.fullmatch(kind):
            hosted.append(kind)
        else:
            raise TranslationError(f"{where}: needs an input_schema (custom tools) or a server tool type")
    return decoded, hosted


def _decode_output(config: Any) -> JsonOutput | None:
    form = config.get("format") if isinstance(config, dict) else None
    if form is None:
        return None
    if not isinstance(form, dict) or form.get("type") != "json_schema" or not isinstance(form.get("schema"), dict):
        raise TranslationError("output_config.format: must be json_schema with a schema object")
    return JsonOutput(fields.json_object(form["schema"], "output_config.format.schema"))


def _decode_tool_choice(choice: Any) -> tuple[ToolChoice | None, bool | None]:
    """The choice and ``parallel_tool_calls`` (Anthropic keeps the latter inside ``tool_choice``)."""
    if choice is None:
        return None, None
    kind = choice.get("type") if isinstance(choice, dict) else None
    disable = choice.get("disable_parallel_tool_use") if isinstance(choice, dict) else None
    parallel = None if not isinstance(disable, bool) else not disable
    if kind in ("auto", "none"):
        return kind, parallel
    if kind == "any":
        return "required", parallel
    if kind == "tool" and isinstance(choice.get("name"), str):
        return choice["name"], parallel
    raise TranslationError("tool_choice: must be auto, any, none or a named tool")


def _decode_reasoning(thinking: Any, output_config: Any) -> Reasoning | None:
    effort = fields.optional_text(fields.mapping(output_config, "output_config").get("effort"), "output_config.effort")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if thinking is None:
        return Reasoning(effort=effort) if effort is not None else None
    budget = fields.integer(thinking.get("budget_tokens"), "thinking.budget_tokens") if kind == "enabled" else None
    if budget is not None:
        return Reasoning(budget=budget, effort=effort)
    if kind in ("disabled", "between_tools"):
        return Reasoning(budget=0)
    if kind == "adaptive":  # no budget: the model decides, at the requested effort
        return Reasoning(effort=effort or _ADAPTIVE_EFFORT)
    raise TranslationError("thinking: must be enabled with budget_tokens, adaptive or disabled")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# -- encoding: what Anthropic upstreams receive -----------------------------------------------------------


def _image_block(image: Image, where: str) -> dict[str, Any]:
    if image.url is not None and image.data is None:
        return {"type": "image", "source": {"type": "url", "url": image.url}}
    media_type = "image/jpeg" if image.media_type == "image/jpg" else image.media_type
    if media_type not in _IMAGE_TYPES:
        raise TranslationError(f"{where}: image type {image.media_type!r} is not accepted (jpeg, png, gif, webp)")
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": image.data or ""}}


def _tool_result_block(result: ToolResult, where: str) -> dict[str, Any]:
    content = [
        {"type": "text", "text": p.text} if isinstance(p, Text) else _image_block(p, f"{where}.content[{i}]")
        for i, p in enumerate(result.content)
        if not isinstance(p, Text) or p.text
    ]
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": result.call_id}
    if content:
        block["content"] = content
    if result.is_error:
        block["is_error"] = True
    return block


def _thinking_block(thinking: Thinking) -> dict[str, Any] | None:
    if thinking.signature and thinking.signature.startswith(REDACTED):
        return {"type": "redacted_thinking", "data": thinking.signature.removeprefix(REDACTED)}
    if thinking.signature:
        return {"type": "thinking", "thinking": thinking.text, "signature": thinking.signature}
    # Unsigned reasoning (another vendor's, or a client that dropped the signature) cannot be replayed: Claude
    # verifies every thinking block it is given, so the thought is left out rather than failing the request.
    return None


def _encode_blocks(message: Message, where: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    blocks: list[dict[str, Any]] = []
    for index, part in enumerate(message.parts):
        at = f"{where}.parts[{index}]"
        if isinstance(part, ToolResult):
            results.append(_tool_result_block(part, at))
        elif isinstance(part, Text):
            if part.text:  # Anthropic rejects empty text blocks
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, Image):
            blocks.append(_image_block(part, at))
        elif isinstance(part, ToolCall):
            blocks.append(
                {"type": "tool_use", "id": part.id, "name": part.name, "input": part.input(f"{at}.arguments")}
            )
        elif message.role == "assistant" and (thinking := _thinking_block(part)) is not None:
            blocks.append(thinking)
    return results + blocks  # tool_result blocks must open the user turn that answers the calls


def _encode_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Strictly alternating turns: consecutive same-role messages (and turns left empty) are merged."""
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        blocks = _encode_blocks(message, f"messages[{index}]")
        if not blocks:
            continue
        if out and out[-1]["role"] == message.role:
            previous = out[-1]["content"]
            if message.role == "user":  # keep every tool_result ahead of the merged turn's other content
                split = sum(1 for b in previous if b["type"] == "tool_result")
                results = [b for b in blocks if b["type"] == "tool_result"]
                others = [b for b in blocks if b["type"] != "tool_result"]
                out[-1]["content"] = previous[:split] + results + previous[split:] + others
            else:
                previous.extend(blocks)
        else:
            out.append({"role": message.role, "content": blocks})
    return out


def _thinking_may_continue(messages: list[dict[str, Any]]) -> bool:
    """Whether thinking may be on: Claude wants the last assistant turn, if it called tools, to open with thinking."""
    last = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
    if last is None or not any(b["type"] == "tool_use" for b in last["content"]):
        return True
    return bool(last["content"][0]["type"] in ("thinking", "redacted_thinking"))


def _encode_tool_choice(request: Request) -> dict[str, Any] | None:
    choice, parallel = request.tool_choice, request.parallel_tool_calls
    if not request.tools or (choice is None and parallel is not False):
        return None  # Anthropic refuses a tool_choice without tools
    if choice == "none":
        return {"type": "none"}
    encoded: dict[str, Any] = (
        {"type": "auto"} if choice in (None, "auto") else {"type": "any"} if choice == "required"
        else {"type": "tool", "name": choice}
    )  # fmt: skip
    if parallel is False:
        encoded["disable_parallel_tool_use"] = True
    return encoded


def _encode_usage(usage: Usage) -> dict[str, Any]:
    encoded: dict[str, Any] = {
        "input_tokens": max(usage.input - usage.cached, 0), "output_tokens": usage.output,
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": usage.cached,
    }  # fmt: skip
    if usage.reasoning:
        encoded["output_tokens_details"] = {"thinking_tokens": usage.reasoning}
    return encoded


def _decode_usage(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    details = usage.get("output_tokens_details")
    thinking = int(details.get("thinking_tokens") or 0) if isinstance(details, dict) else 0
    return Usage.with_caches(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0),
                             int(usage.get("cache_read_input_tokens") or 0),
                             int(usage.get("cache_creation_input_tokens") or 0), thinking)  # fmt: skip


def _stop_reason(reason: FinishReason | None, stop_sequence: str | None) -> str:
    if reason in (None, "stop"):
        return "stop_sequence" if stop_sequence else "end_turn"
    return _FINISH_OUT[reason]


def _message_id(ident: str) -> str:
    if not ident:
        return f"msg_{uuid.uuid4().hex[:24]}"
    return ident if ident.startswith("msg_") else f"msg_{ident}"


def _response_input(call: ToolCall) -> dict[str, Any]:
    """A tool call's input for a client; arguments that are not a JSON object are passed on, not lost."""
    try:
        value = orjson.loads(call.arguments) if call.arguments.strip() else {}
    except orjson.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {"_raw_arguments": call.arguments}


def _response_block(part: Part) -> dict[str, Any] | None:
    if isinstance(part, Text):
        return {"type": "text", "text": part.text}
    if isinstance(part, Thinking):
        if part.signature and part.signature.startswith(REDACTED):
            return {"type": "redacted_thinking", "data": part.signature.removeprefix(REDACTED)}
        return {"type": "thinking", "thinking": part.text, "signature": part.signature or ""}
    if isinstance(part, ToolCall):
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": _response_input(part)}
    return None  # Claude's format has no way to return images or tool results from the assistant


class AnthropicCodec(CodecBase):
    name = "anthropic-messages"
    stream_end = StreamEnd(rb'"type"\s*:\s*"(?:message_stop|error)"')
    keepalive = SSE_COMMENT
    vendor_headers: tuple[str, ...] = ("anthropic-",)
    json_mode = False
    default_headers: Mapping[str, str] = MappingProxyType({"anthropic-version": API_VERSION})
    counts_tokens = True
    context_window_markers = (b"prompt is too long",)

    usage_markers = USAGE_MARKERS

    def usage_of(self, document: Any) -> Usage | None:
        """A message's usage, or a stream's: its input in ``message_start``, its output in ``message_delta``."""
        usage = usage_object(document, "message")
        return _decode_usage(usage) if usage is not None else None

    # -- inbound ------------------------------------------------------------------------------------------

    def decode_request(self, body: dict[str, Any]) -> Request:
        output_config = body.get("output_config")
        extra_system, messages = _decode_messages(body.get("messages"))
        tools, hosted = _decode_tools(body.get("tools"))
        choice, parallel = _decode_tool_choice(body.get("tool_choice"))
        return Request(
            model=str(body.get("model", "")),
            messages=messages,
            system=_texts(body.get("system"), "system") + extra_system,
            tools=tools,
            tool_choice=choice,
            max_tokens=fields.integer(body.get("max_tokens"), "max_tokens"),
            temperature=fields.number(body.get("temperature"), "temperature"),
            top_p=fields.number(body.get("top_p"), "top_p"),
            stop=fields.texts(body.get("stop_sequences"), "stop_sequences"),
            stream=body.get("stream") is True,
            reasoning=_decode_reasoning(body.get("thinking"), output_config),
            parallel_tool_calls=parallel,
            stream_usage=True,  # an Anthropic stream always carries usage
            output=_decode_output(output_config),
            hosted_tools=hosted,
        )

    def encode_response(self, response: Response) -> bytes:
        content = [b for b in map(_response_block, response.parts) if b is not None]
        return orjson.dumps({
            "id": _message_id(response.id), "type": "message", "role": "assistant", "model": response.model,
            "content": content, "stop_reason": _stop_reason(response.finish, response.stop_sequence),
            "stop_sequence": response.stop_sequence if response.finish == "stop" else None,
            "usage": _encode_usage(response.usage),
        })  # fmt: skip

    def stream_encoder(self, request: Request) -> _StreamEncoder:
        return _StreamEncoder(request.model)

    def encode_error(self, status: int, message: str, code: str | None) -> bytes:
        return orjson.dumps(error_document(status, message))

    # -- upstream -----------------------------------------------------------------------------------------

    def upstream_path(self, model: str, stream: bool) -> str:
        return "/v1/messages"  # the base URL is https://api.anthropic.com, without /v1

    def encode_request(self, request: Request) -> bytes:
        return orjson.dumps(self.request_body(request))

    def request_body(self, request: Request) -> dict[str, Any]:
        """The Messages body, before it is serialised (Vertex moves the model and adds its version)."""
        max_tokens = request.max_tokens or DEFAULT_MAX_TOKENS
        body: dict[str, Any] = {"model": request.model, "max_tokens": max_tokens}
        system = [{"type": "text", "text": t.text} for t in request.system if t.text]
        if system:
            body["system"] = system[0]["text"] if len(system) == 1 else system
        body["messages"] = _encode_messages(request.messages)
        if not body["messages"]:
            raise TranslationError("messages: nothing left that Anthropic accepts (empty turns are dropped)")
        if request.tools:
            body["tools"] = [_tool(t) for t in request.tools]
        choice = _encode_tool_choice(request)
        if choice is not None:
            body["tool_choice"] = choice
        budget = thinking_budget(request.reasoning)
        if choice is not None and choice["type"] in ("any", "tool"):
            budget = 0  # Claude cannot think when a tool call is forced; the forced call is what the client needs
        if not _thinking_may_continue(body["messages"]):
            budget = 0  # mid tool loop without Claude's own signed thinking (another vendor's turn): Claude refuses it
        if budget > 0:
            budget = max(budget, MIN_THINKING_BUDGET)
            if budget >= max_tokens:
                body["max_tokens"] = budget + DEFAULT_MAX_TOKENS
            body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        temperature, top_p = request.temperature, request.top_p
        if budget > 0:
            temperature = None  # thinking rejects any temperature but the default
            top_p = top_p if top_p is not None and 0.95 <= top_p <= 1 else None
        elif temperature is not None:
            top_p = None  # current Claude models refuse temperature and top_p together; temperature is the usual knob
        if temperature is not None:
            body["temperature"] = temperature
        if top_p is not None:
            body["top_p"] = top_p
        if request.stop:
            body["stop_sequences"] = request.stop
        if request.stream:
            body["stream"] = True
        return body

    def decode_response(self, body: dict[str, Any]) -> Response:
        parts: list[Part] = []
        for block in body.get("content") or []:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                parts.append(Text(str(block.get("text", ""))))
            elif kind == "thinking":
                parts.append(Thinking(str(block.get("thinking", "")), block.get("signature") or None))
            elif kind == "redacted_thinking":
                parts.append(Thinking("", REDACTED + str(block.get("data", ""))))
            elif kind == "tool_use":
                parts.append(ToolCall(str(block.get("id", "")), str(block.get("name", "")),
                                      _dumps(block.get("input") or {})))  # fmt: skip
        finish = _FINISH_IN.get(str(body.get("stop_reason")), "stop")
        stop_sequence = body.get("stop_sequence") if isinstance(body.get("stop_sequence"), str) else None
        return Response(str(body.get("id", "")), str(body.get("model", "")), parts, finish,
                        _decode_usage(body.get("usage")), stop_sequence)  # fmt: skip

    def event_decoder(self) -> _StreamDecoder:
        return _StreamDecoder()

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def count_request(self, inbound: Codec, payload: dict[str, Any], raw: bytes | bytearray, model: str
                      ) -> tuple[str, bytes | bytearray]:  # fmt: skip
        """``count_tokens`` takes a Messages body without ``max_tokens`` or ``stream``."""
        if inbound.name == self.name:
            return COUNT_PATH, reencode(payload, model)
        request = inbound.decode_request(payload)
        request.model = model
        body = orjson.loads(self.encode_request(request))
        body.pop("max_tokens", None)
        body.pop("stream", None)
        return COUNT_PATH, orjson.dumps(body)

    def count_of(self, body: dict[str, Any]) -> int | None:
        count = body.get("input_tokens")
        return count if isinstance(count, int) else None


def _tool(tool: Tool) -> dict[str, Any]:
    schema = tool.parameters if tool.parameters.get("type") == "object" else {"type": "object", **tool.parameters}
    encoded: dict[str, Any] = {"name": tool.name}
    if tool.description:
        encoded["description"] = tool.description
    encoded["input_schema"] = schema
    return encoded


def error_document(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body, its ``type`` chosen by HTTP status."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


class _StreamDecoder:
    def __init__(self) -> None:
        self.start_usage: dict[str, Any] = {}  # message_start's input counts
        self.tools: dict[int, int] = {}  # block index -> tool index

    def feed(self, event: str | None, data: bytes) -> list[Event]:
        if not data.strip():
            return []
        chunk = orjson.loads(data)
        kind = chunk.get("type") or event
        if kind == "message_start":
            message = chunk.get("message") or {}
            usage = message.get("usage")
            counts: dict[str, Any] = usage if isinstance(usage, dict) else {}
            self.start_usage = {k: v for k, v in counts.items() if k in _INPUT_COUNTS and v is not None}
            # the input side only: message_start's output count is a placeholder, the real one comes at the end
            return [
                MessageStart(str(message.get("id", "")), str(message.get("model", "")), _decode_usage(self.start_usage))
            ]
        if kind == "content_block_start":
            return self._start(int(chunk.get("index", 0)), chunk.get("content_block") or {})
        if kind == "content_block_delta":
            return self._delta(int(chunk.get("index", 0)), chunk.get("delta") or {})
        if kind == "message_delta":
            delta = chunk.get("delta") or {}
            reason = _FINISH_IN.get(str(delta.get("stop_reason")), "stop")
            stop_sequence = delta.get("stop_sequence") if isinstance(delta.get("stop_sequence"), str) else None
            # message_delta's counts are cumulative and may leave out what message_start already said
            usage = chunk.get("usage")
            counts = usage if isinstance(usage, dict) else {}
            merged = {**self.start_usage, **{k: v for k, v in counts.items() if v is not None}}
            return [Finish(reason, _decode_usage(merged), stop_sequence)]
        if kind == "error":
            error = chunk.get("error") or {}
            status = 529 if error.get("type") == "overloaded_error" else 502
            return [StreamError(status, str(error.get("message", "upstream error")))]
        return []  # ping, content_block_stop, message_stop

    def _start(self, index: int, block: dict[str, Any]) -> list[Event]:
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            return [TextDelta(str(block["text"]))]
        if kind == "thinking" and block.get("thinking"):
            return [ThinkingDelta(str(block["thinking"]))]
        if kind == "redacted_thinking":
            return [ThinkingDelta("", REDACTED + str(block.get("data", "")))]
        if kind == "tool_use":
            tool = self.tools[index] = len(self.tools)
            events: list[Event] = [ToolCallStart(tool, str(block.get("id", "")), str(block.get("name", "")))]
            if block.get("input"):
                events.append(ToolCallDelta(tool, _dumps(block["input"])))
            return events
        return []

    def _delta(self, index: int, delta: dict[str, Any]) -> list[Event]:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [TextDelta(str(delta["text"]))]
        if kind == "input_json_delta" and delta.get("partial_json") and index in self.tools:
            return [ToolCallDelta(self.tools[index], str(delta["partial_json"]))]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [ThinkingDelta(str(delta["thinking"]))]
        if kind == "signature_delta" and delta.get("signature"):
            return [ThinkingDelta(signature=str(delta["signature"]))]
        return []


def _sse(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"


class _StreamEncoder:
    """Anthropic's event grammar from canonical events: one open content block at a time, counted from 0.

    ``message_start`` always comes first (synthesised if the upstream never said where the message began);
    ``message_delta`` and ``message_stop`` wait until both the finish reason and the usage are known, or for
    ``close``, because OpenAI-shaped upstreams send usage in a chunk after the finish.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self.done = False
        self.open: str | None = None  # "text", "thinking" or "tool:<index>"
        self.blocks = 0
        self.tool_blocks: dict[int, int] = {}  # tool index -> block index
        self.reason: FinishReason | None = None
        self.stop_sequence: str | None = None
        self.usage: Usage | None = None
        self.usage_final = False  # a Finish carried usage, not just message_start's input count

    def encode(self, event: Event) -> bytes:
        if self.done:
            return b""
        if isinstance(event, StreamError):
            self.done = True  # the client's SDK raises here; nothing may follow
            return _sse("error", {"error": error_document(event.status, event.message)["error"]})
        if isinstance(event, MessageStart):
            if event.usage is not None:
                self.usage = event.usage
            return self._message_start(event.id, event.model)
        out = self._message_start("", "")
        if isinstance(event, TextDelta):
            if event.text:
                out += self._ensure("text", {"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": event.text})
        elif isinstance(event, ThinkingDelta):
            out += self._thinking(event)
        elif isinstance(event, ToolCallStart):
            out += self._tool_start(event.index, event.id, event.name)
        elif isinstance(event, ToolCallDelta):
            out += self._tool_delta(event)
        else:
            out += self._finish(event)
        return out

    def close(self) -> bytes:
        if self.done:
            return b""
        return self._message_start("", "") + self._stop_block() + self._end()

    # -- pieces -------------------------------------------------------------------------------------------

    def _message_start(self, ident: str, model: str) -> bytes:
        if self.started:
            return b""
        self.started = True
        usage = _encode_usage(Usage(self.usage.input, 0, self.usage.cached) if self.usage else Usage())
        message: dict[str, Any] = {
            "id": _message_id(ident), "type": "message", "role": "assistant", "model": model or self.model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage,
        }  # fmt: skip
        return _sse("message_start", {"message": message})

    def _stop_block(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return _sse("content_block_stop", {"index": self.blocks - 1})

    def _ensure(self, kind: str, block: dict[str, Any]) -> bytes:
        """Opens a block of ``kind`` unless one is open already, closing whatever else was."""
        if self.open == kind:
            return b""
        out = self._stop_block()
        self.open = kind
        self.blocks += 1
        return out + _sse("content_block_start", {"index": self.blocks - 1, "content_block": block})

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        return _sse("content_block_delta", {"index": self.blocks - 1 if index is None else index, "delta": delta})

    def _thinking(self, event: ThinkingDelta) -> bytes:
        if event.signature and event.signature.startswith(REDACTED):
            data = event.signature.removeprefix(REDACTED)
            out = self._ensure("redacted", {"type": "redacted_thinking", "data": data})
            return out + self._stop_block()
        out = b""
        if event.text or event.signature:
            out += self._ensure("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        if event.text:
            out += self._delta({"type": "thinking_delta", "thinking": event.text})
        if event.signature:
            out += self._delta({"type": "signature_delta", "signature": event.signature})
        return out

    def _tool_start(self, index: int, ident: str, name: str) -> bytes:
        block = {"type": "tool_use", "id": ident, "name": name, "input": {}}
        out = self._ensure(f"tool:{index}", block)
        self.tool_blocks[index] = self.blocks - 1
        return out

    def _tool_delta(self, event: ToolCallDelta) -> bytes:
        out = b""
        if event.index not in self.tool_blocks:  # arguments for a call never announced: announce it now
            out += self._tool_start(event.index, f"toolu_{uuid.uuid4().hex[:24]}", "")
        if not event.arguments:
            return out
        delta = {"type": "input_json_delta", "partial_json": event.arguments}
        if self.open == f"tool:{event.index}":
            return out + self._delta(delta)
        # An upstream interleaving parallel calls: that call's block is already closed, but its index still
        # names it, and the arguments reach the client instead of vanishing.
        return out + self._delta(delta, self.tool_blocks[event.index])

    def _finish(self, event: Finish) -> bytes:
        if event.usage is not None:
            self.usage, self.usage_final = event.usage, True
        if event.stop_sequence is not None:
            self.stop_sequence = event.stop_sequence
        out = b""
        if event.reason is not None:
            self.reason = event.reason
            out = self._stop_block()
        return out + (self._end() if self.reason is not None and self.usage_final else b"")

    def _end(self) -> bytes:
        self.done = True
        usage = _encode_usage(self.usage or Usage())
        delta = {"stop_reason": _stop_reason(self.reason, self.stop_sequence),
                 "stop_sequence": self.stop_sequence if self.reason in (None, "stop") else None}  # fmt: skip
        return _sse("message_delta", {"delta": delta, "usage": usage}) + _sse("message_stop", {})
