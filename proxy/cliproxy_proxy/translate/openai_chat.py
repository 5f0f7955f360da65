"""OpenAI Chat Completions (``POST /v1/chat/completions``) as a canonical codec."""

from __future__ import annotations

import time
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
    usage_object,
)
from .codec import CodecBase
from .embeddings import EmbeddingsWire, OpenAIEmbeddings

_FINISH_IN: dict[str, FinishReason] = {
    "stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls",
    "content_filter": "content_filter",
}  # fmt: skip
_EFFORTS = (("minimal", 512), ("low", 1024), ("medium", 8192), ("high", 32768))


def _text_of(content: Any, where: str) -> list[Text]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Text(content)] if content else []
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text", "output_text"):
                raise TranslationError(f"{where}: only text content is supported here")
            texts.append(Text(fields.text(part.get("text"), f"{where}.text")))
        return texts
    raise TranslationError(f"{where}: content must be a string or a list of parts")


def _image(url: str) -> Image:
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media_type = head[5:].split(";")[0] or "image/png"
        return Image(media_type, data=data)
    return Image("image/*", url=url)


def _user_parts(content: Any, where: str) -> list[Part]:
    if not isinstance(content, list):
        return list(_text_of(content, where))
    parts: list[Part] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append(Text(fields.text(part.get("text"), f"{where}[{index}].text")))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise TranslationError(f"{where}[{index}].image_url.url: must be a string")
            parts.append(_image(url))
        else:
            raise TranslationError(f"{where}[{index}]: content of type {kind!r} cannot be translated")
    return parts


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
        if role in ("system", "developer"):
            system.extend(_text_of(content, f"{where}.content"))
        elif role == "user":
            out.append(Message("user", _user_parts(content, f"{where}.content")))
        elif role == "assistant":
            parts: list[Part] = []
            if isinstance(message.get("reasoning_content"), str) and message["reasoning_content"]:
                parts.append(Thinking(message["reasoning_content"]))
            parts.extend(_text_of(content, f"{where}.content"))
            for number, call in enumerate(fields.array(message.get("tool_calls"), f"{where}.tool_calls")):
                parts.append(_decode_call(call, f"{where}.tool_calls[{number}]"))
            out.append(Message("assistant", parts))
        elif role == "tool":
            call_id = fields.text(message.get("tool_call_id"), f"{where}.tool_call_id")
            result = ToolResult(call_id, list(_text_of(content, f"{where}.content")))
            if out and out[-1].role == "user" and all(isinstance(p, ToolResult) for p in out[-1].parts):
                out[-1].parts.append(result)  # consecutive tool messages answer one assistant turn together
            else:
                out.append(Message("user", [result]))
        else:
            raise TranslationError(f"{where}.role: {role!r} is not a chat role")
    return system, out


def _decode_call(call: Any, where: str) -> ToolCall:
    call = fields.mapping(call, where)
    function = fields.mapping(call.get("function"), f"{where}.function")
    return ToolCall(fields.text(call.get("id"), f"{where}.id"), fields.text(function.get("name"), f"{where}.name"),
                    fields.text(function.get("arguments"), f"{where}.arguments") or "{}")  # fmt: skip


def _decode_tools(tools: Any) -> list[Tool]:
    decoded = []
    for index, tool in enumerate(fields.array(tools, "tools")):
        where = f"tools[{index}].function"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise TranslationError(f"tools[{index}]: only function tools can be translated")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        decoded.append(Tool(fields.text(function.get("name"), f"{where}.name"),
                            fields.optional_text(function.get("description"), f"{where}.description"),
                            fields.json_object(parameters, f"{where}.parameters")))  # fmt: skip
    return decoded


def _decode_tool_choice(choice: Any) -> ToolChoice | None:
    if choice is None or choice in ("auto", "none", "required"):
        return choice  # type: ignore[no-any-return]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return fields.text(choice["function"].get("name"), "tool_choice.function.name")
    raise TranslationError("tool_choice: must be auto, none, required or a named function")


#: A finish reason, ``[DONE]`` or an error: what ends an OpenAI stream (chat and legacy completions alike).
STREAM_END = StreamEnd(rb'"finish_reason"\s*:\s*"', line_start=rb'data:[ \t]*(?:\[DONE\]|\{\s*"error")')


def _decode_response_format(form: Any) -> JsonOutput | None:
    kind = form.get("type") if isinstance(form, dict) else None
    if form is None or kind == "text":
        return None
    if kind == "json_object":
        return JsonOutput()
    spec = form.get("json_schema") if kind == "json_schema" else None
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise TranslationError("response_format: must be text, json_object or json_schema with a schema object")
    schema = fields.json_object(spec["schema"], "response_format.json_schema.schema") if "schema" in spec else None
    name = fields.text(spec.get("name"), "response_format.json_schema.name") or "response"
    return JsonOutput(schema, name, fields.flag(spec.get("strict"), "response_format.json_schema.strict"))


def encode_response_format(output: JsonOutput) -> dict[str, Any]:
    """Chat Completions' ``response_format`` (the Responses API's ``text.format`` is its flattened ``json_schema``)."""
    if output.schema is None:
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": output.name, "schema": output.schema}
    if output.strict is not None:
        spec["strict"] = output.strict
    return {"type": "json_schema", "json_schema": spec}


class OpenAIChatCodec(CodecBase):
    name = "openai-chat"
    stream_end = STREAM_END
    keepalive = SSE_COMMENT
    vendor_headers: tuple[str, ...] = ("openai-beta",)
    embeddings: EmbeddingsWire | None = OpenAIEmbeddings()
    #: OpenAI's code, and the message its many imitators (vLLM, Groq, DeepSeek...) copy.
    context_window_markers = (b"context_length_exceeded", b"maximum context length")

    usage_markers = USAGE_MARKERS

    def usage_of(self, document: Any) -> Usage | None:
        usage = usage_object(document)
        return _decode_usage(usage) if usage is not None else None

    # -- inbound ------------------------------------------------------------------------------------------

    def decode_request(self, body: dict[str, Any]) -> Request:
        if body.get("n", 1) not in (1, None):
            raise TranslationError("n: only one choice can be translated to this provider")
        system, messages = _decode_messages(body.get("messages"))
        effort = body.get("reasoning_effort")
        options = body.get("stream_options")
        limit = fields.integer(body.get("max_completion_tokens"), "max_completion_tokens")
        return Request(
            model=str(body.get("model", "")),
            messages=messages,
            system=system,
            tools=_decode_tools(body.get("tools")),
            tool_choice=_decode_tool_choice(body.get("tool_choice")),
            max_tokens=limit or fields.integer(body.get("max_tokens"), "max_tokens"),
            temperature=fields.number(body.get("temperature"), "temperature"),
            top_p=fields.number(body.get("top_p"), "top_p"),
            stop=fields.texts(body.get("stop"), "stop"),
            stream=body.get("stream") is True,
            reasoning=Reasoning(effort=effort) if isinstance(effort, str) else None,
            parallel_tool_calls=fields.flag(body.get("parallel_tool_calls"), "parallel_tool_calls"),
            stream_usage=isinstance(options, dict) and options.get("include_usage") is True,
            output=_decode_response_format(body.get("response_format")),
        )

    def encode_response(self, response: Response) -> bytes:
        text = "".join(p.text for p in response.parts if isinstance(p, Text))
        thinking = "".join(p.text for p in response.parts if isinstance(p, Thinking))
        calls = [p for p in response.parts if isinstance(p, ToolCall)]
        message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
        if thinking:
            message["reasoning_content"] = thinking
        if calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
            ]
        ident = response.id if response.id.startswith("chatcmpl") else f"chatcmpl-{response.id}"
        return orjson.dumps({
            "id": ident, "object": "chat.completion", "created": int(time.time()), "model": response.model,
            "choices": [{"index": 0, "message": message, "finish_reason": response.finish, "logprobs": None}],
            "usage": _usage(response.usage),
        })  # fmt: skip

    def stream_encoder(self, request: Request) -> OpenAIStreamEncoder:
        return OpenAIStreamEncoder(request.model, request.stream_usage)

    def encode_error(self, status: int, message: str, code: str | None) -> bytes:
        return orjson.dumps(error_body(status, message, code))

    # -- upstream -----------------------------------------------------------------------------------------

    def upstream_path(self, model: str, stream: bool) -> str:
        return "/chat/completions"

    def encode_request(self, request: Request) -> bytes:
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": "\n\n".join(t.text for t in request.system)})
        for message in request.messages:
            messages.extend(_encode_message(message))
        body: dict[str, Any] = {"model": request.model, "messages": messages}
        if request.tools:
            body["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description or "",
                                                  "parameters": t.parameters}} for t in request.tools
            ]  # fmt: skip
        if request.tool_choice is not None:
            choice = request.tool_choice
            body["tool_choice"] = (
                choice if choice in ("auto", "none", "required") else {"type": "function", "function": {"name": choice}}
            )
        for key, value in (("max_tokens", request.max_tokens), ("temperature", request.temperature),
                           ("top_p", request.top_p), ("parallel_tool_calls", request.parallel_tool_calls)):  # fmt: skip
            if value is not None:
                body[key] = value
        if request.stop:
            body["stop"] = request.stop
        effort = _effort(request.reasoning)
        if effort is not None:
            body["reasoning_effort"] = effort
        if request.output is not None:
            body["response_format"] = encode_response_format(request.output)
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    def decode_response(self, body: dict[str, Any]) -> Response:
        choices = body.get("choices") or [{}]
        message = choices[0].get("message") or {}
        parts: list[Part] = []
        if isinstance(message.get("reasoning_content"), str) and message["reasoning_content"]:
            parts.append(Thinking(message["reasoning_content"]))
        if isinstance(message.get("content"), str) and message["content"]:
            parts.append(Text(message["content"]))
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            parts.append(ToolCall(str(call.get("id", "")), str(function.get("name", "")),
                                  str(function.get("arguments") or "{}")))  # fmt: skip
        finish = _FINISH_IN.get(str(choices[0].get("finish_reason")), "stop")
        return Response(str(body.get("id", "")), str(body.get("model", "")), parts, finish,
                        _decode_usage(body.get("usage")))  # fmt: skip

    def event_decoder(self) -> _StreamDecoder:
        return _StreamDecoder()


def _effort(reasoning: Reasoning | None) -> str | None:
    if reasoning is None:
        return None
    if reasoning.effort is not None:
        return {"none": None, "xhigh": "high", "max": "high"}.get(reasoning.effort, reasoning.effort)
    if not reasoning.budget:
        return None
    return next((name for name, ceiling in _EFFORTS if reasoning.budget <= ceiling), "high")


def _encode_message(message: Message) -> list[dict[str, Any]]:
    if message.role == "assistant":
        text = "".join(p.text for p in message.parts if isinstance(p, Text))
        calls = [p for p in message.parts if isinstance(p, ToolCall)]
        encoded: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            encoded["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
            ]
        return [encoded]  # earlier turns' reasoning is not input to an OpenAI-shaped model
    out: list[dict[str, Any]] = []
    content: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, ToolResult):
            texts = [p.text for p in part.content if isinstance(p, Text)]
            images = [p for p in part.content if isinstance(p, Image)]
            prefix = "Error: " if part.is_error else ""
            out.append({"role": "tool", "tool_call_id": part.call_id, "content": prefix + "\n".join(texts)})
            if images:  # tool messages take text only: the images follow in a user turn instead of vanishing
                content.append({"type": "text", "text": f"Images returned by tool call {part.call_id}:"})
                content.extend(_image_part(i) for i in images)
        elif isinstance(part, Text):
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, Image):
            content.append(_image_part(part))
    if content:
        only_text = all(c["type"] == "text" for c in content)
        out.append({"role": "user", "content": "\n".join(c["text"] for c in content) if only_text else content})
    return out


def _image_part(image: Image) -> dict[str, Any]:
    url = image.url or f"data:{image.media_type};base64,{image.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input, "completion_tokens": usage.output, "total_tokens": usage.total,
        "prompt_tokens_details": {"cached_tokens": usage.cached},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning},
    }  # fmt: skip


def _decode_usage(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
        int(prompt_details.get("cached_tokens") or 0), int(completion_details.get("reasoning_tokens") or 0),
    )  # fmt: skip


class _StreamDecoder:
    def __init__(self) -> None:
        self.started = False
        self.tool_indexes: set[int] = set()

    def feed(self, event: str | None, data: bytes) -> list[Event]:
        if data.strip() == b"[DONE]":
            return []
        chunk = orjson.loads(data)
        if isinstance(chunk.get("error"), dict):
            return [StreamError(502, str(chunk["error"].get("message", "upstream error")))]
        events: list[Event] = []
        if not self.started:
            self.started = True
            events.append(MessageStart(str(chunk.get("id", "")), str(chunk.get("model", ""))))
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                events.append(ThinkingDelta(delta["reasoning_content"]))
            if delta.get("content"):
                events.append(TextDelta(delta["content"]))
            for call in delta.get("tool_calls") or []:
                index = int(call.get("index", 0))
                function = call.get("function") or {}
                if index not in self.tool_indexes:
                    self.tool_indexes.add(index)
                    events.append(ToolCallStart(index, str(call.get("id", "")), str(function.get("name", ""))))
                if function.get("arguments"):
                    events.append(ToolCallDelta(index, function["arguments"]))
            if choice.get("finish_reason"):
                events.append(Finish(_FINISH_IN.get(choice["finish_reason"], "stop")))
        if isinstance(chunk.get("usage"), dict):
            events.append(Finish(None, _decode_usage(chunk["usage"])))
        return events


class OpenAIStreamEncoder:
    """OpenAI's chunk stream; legacy completions share it and only shape their choices and usage differently."""

    OBJECT = "chat.completion.chunk"

    def __init__(self, model: str, usage: bool, ident: str = "chatcmpl-proxy") -> None:
        self.model = model
        self.usage = usage
        self.id = ident
        self.created = int(time.time())
        self.pending_usage: Usage | None = None

    def _choice(self, payload: Any, finish: str | None) -> dict[str, Any]:
        return {"index": 0, "delta": payload, "finish_reason": finish, "logprobs": None}

    def _usage(self, usage: Usage) -> dict[str, Any]:
        return _usage(usage)

    def _chunk(self, payload: Any, finish: str | None = None, usage: Usage | None = None) -> bytes:
        choices = [] if payload is None else [self._choice(payload, finish)]
        chunk: dict[str, Any] = {"id": self.id, "object": self.OBJECT, "created": self.created,
                                 "model": self.model, "choices": choices}  # fmt: skip
        if self.usage:
            chunk["usage"] = self._usage(usage) if usage is not None else None
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def encode(self, event: Event) -> bytes:
        if isinstance(event, MessageStart):
            self.id = event.id if event.id.startswith("chatcmpl") else f"chatcmpl-{event.id}"
            return self._chunk({"role": "assistant", "content": ""})
        if isinstance(event, TextDelta):
            return self._chunk({"content": event.text})
        if isinstance(event, ThinkingDelta):
            return self._chunk({"reasoning_content": event.text}) if event.text else b""
        if isinstance(event, ToolCallStart):
            call = {"index": event.index, "id": event.id, "type": "function",
                    "function": {"name": event.name, "arguments": ""}}  # fmt: skip
            return self._chunk({"tool_calls": [call]})
        if isinstance(event, ToolCallDelta):
            return self._chunk({"tool_calls": [{"index": event.index, "function": {"arguments": event.arguments}}]})
        if isinstance(event, Finish):
            if event.usage is not None:
                self.pending_usage = event.usage
            return self._chunk({}, event.reason) if event.reason is not None else b""
        return b"data: " + orjson.dumps(error_body(event.status, event.message, "upstream_error")) + b"\n\n"

    def close(self) -> bytes:
        tail = self._chunk(None, usage=self.pending_usage) if self.usage and self.pending_usage else b""
        return tail + b"data: [DONE]\n\n"
