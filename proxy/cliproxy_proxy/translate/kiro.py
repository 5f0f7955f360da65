"""Kiro (Amazon's Kiro IDE: the CodeWhisperer / Amazon Q streaming API) as an upstream codec.

The chat call is ``POST https://q.{region}.amazonaws.com/generateAssistantResponse`` with a bearer token; the body
is a ``conversationState`` (the last user turn as ``currentMessage``, earlier turns as alternating ``history``) and
the answer is always an AWS event stream (:mod:`.eventstream`), whether or not the client asked to stream.

Decisions worth knowing:

* Kiro has no system field: the system text opens the first user turn, separated by a blank line.
* Kiro wants strict user/assistant alternation that starts with a user turn and ends with one: same-role turns
  are merged, a conversation opening with the assistant gets a ``(continued)`` user turn first, and one ending
  with the assistant (a prefill) gets ``Continue`` as the current message. Kiro refuses empty content, so empty
  turns get a short placeholder.
* Tool results are paired with the calls of the assistant turn just before them; a result with no such call
  (an orphan) is kept as text rather than sent as a ``toolResult`` Kiro would refuse. Images inside tool results
  move to the user turn's ``images`` (Kiro tool results carry text only).
* Sampling (``max_tokens``, ``temperature``, ``top_p``, ``stop``) and ``tool_choice`` other than ``none`` cannot
  be expressed and are dropped; ``tool_choice: none`` leaves the tools out.
* Usage: Kiro reports credits (``meteringEvent``) and a context-window share (``contextUsageEvent``), not token
  counts. Token counts are taken when an event carries them; otherwise input is estimated from the share of a
  200k window, as cliproxyapi++ does, and output stays 0.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..oauth.base import TokenSet
from .canonical import (
    SSE_COMMENT,
    Event,
    Finish,
    FinishReason,
    Image,
    Message,
    MessageStart,
    Part,
    Request,
    Response,
    StreamEnd,
    StreamError,
    Text,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    TranslationError,
    UpstreamFailed,
    Usage,
)
from .codec import CodecBase
from .eventstream import FramedEventDecoder
from .eventstream import Message as Frame

API_PATH = "/generateAssistantResponse"
#: What the Kiro IDE's SDK sends besides ``Authorization``; ``amz-sdk-invocation-id`` is fresh per call.
STATIC_HEADERS: Mapping[str, str] = {
    "Content-Type": "application/json",
    "Accept": "application/vnd.amazon.eventstream, application/json",
    "x-amzn-codewhisperer-optout": "true",
    "x-amzn-kiro-agent-mode": "vibe",
    "amz-sdk-request": "attempt=1; max=1",
    "User-Agent": "aws-sdk-js/1.0.27 ua/2.1 api/codewhispererstreaming#1.0.27 m/E KiroIDE cliproxy",
    "x-amz-user-agent": "aws-sdk-js/1.0.27 KiroIDE cliproxy",
}
ORIGIN = "AI_EDITOR"  # the Kiro IDE's quota; Amazon Q Developer CLI uses "CLI"
#: Public model names and the modelId Kiro takes (as the Kiro IDE and cliproxyapi++ name them). Aliases with
#: dashes (``claude-sonnet-4-5``), an Anthropic date suffix or a ``kiro-``/``amazonq-`` prefix map the same way.
MODEL_IDS: Mapping[str, str] = {
    "auto": "auto",
    "claude-sonnet-4.5": "claude-sonnet-4.5",
    "claude-sonnet-4": "claude-sonnet-4",
    "claude-haiku-4.5": "claude-haiku-4.5",
    "claude-opus-4.5": "claude-opus-4.5",
}
#: Kiro refuses tool descriptions over 10240 bytes.
MAX_TOOL_DESCRIPTION = 10_237
CONTEXT_WINDOW = 200_000
_PREFIX = re.compile(r"^(?:kiro|amazonq)-")
_DATE = re.compile(r"-\d{8}$")
_DASHED_VERSION = re.compile(r"-(\d)-(\d)$")
_IMAGE_FORMATS = frozenset({"png", "jpeg", "gif", "webp"})
_EXCEPTION_STATUS = {
    "ThrottlingException": 429, "ServiceQuotaExceededException": 429, "ValidationException": 400,
    "AccessDeniedException": 403, "ResourceNotFoundException": 404, "ConflictException": 409,
    "InternalServerException": 500, "ServiceUnavailableException": 503, "ContentLengthExceededException": 400,
}  # fmt: skip


def kiro_model_id(model: str) -> str:
    """Kiro's modelId for a public name; names it does not know pass through for Kiro to judge."""
    name = _DATE.sub("", _PREFIX.sub("", model.strip().lower()))
    name = _DASHED_VERSION.sub(r"-\1.\2", name)
    return MODEL_IDS.get(name, model)


def request_headers() -> dict[str, str]:
    """Headers for one chat call, ``Authorization`` aside."""
    return {**STATIC_HEADERS, "amz-sdk-invocation-id": str(uuid.uuid4())}


def error_message(status: int, body: bytes) -> str:
    """A non-200 answer's message (``{"message": ..., "reason": ...}`` or ``{"__type", "message"}``)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict):
        message = document.get("message") or document.get("Message")
        reason = document.get("reason")
        if isinstance(message, str) and message:
            return f"{message} ({reason})" if isinstance(reason, str) and reason else message
    return f"Kiro answered HTTP {status}"


# -- requests -------------------------------------------------------------------------------------------


def _image(image: Image, where: str) -> dict[str, Any]:
    if image.data is None:
        raise TranslationError(f"{where}: Kiro takes inline (base64) images only, not URLs")
    kind = image.media_type.removeprefix("image/").lower()
    kind = "jpeg" if kind == "jpg" else kind
    if kind not in _IMAGE_FORMATS:
        raise TranslationError(f"{where}: image type {image.media_type!r} is not accepted (png, jpeg, gif, webp)")
    return {"format": kind, "source": {"bytes": image.data}}


def _texts(parts: list[Text | Image]) -> str:
    return "\n".join(p.text for p in parts if isinstance(p, Text) and p.text)


def _tool_spec(tool: Tool) -> dict[str, Any]:
    description = tool.description or tool.name  # Kiro refuses a tool without a description
    raw = description.encode()
    if len(raw) > MAX_TOOL_DESCRIPTION:
        description = raw[:MAX_TOOL_DESCRIPTION].decode(errors="ignore") + "..."
    return {"toolSpecification": {"name": tool.name, "description": description,
                                  "inputSchema": {"json": tool.parameters}}}  # fmt: skip


@dataclass(slots=True)
class _Turn:
    role: str
    parts: list[Part] = field(default_factory=list)


def _turns(messages: list[Message]) -> list[_Turn]:
    """Strict alternation: same-role neighbours merged, a user turn first and last."""
    turns: list[_Turn] = []
    for message in messages:
        if turns and turns[-1].role == message.role:
            turns[-1].parts.extend(message.parts)
        else:
            turns.append(_Turn(message.role, list(message.parts)))
    if not turns or turns[0].role != "user":
        turns.insert(0, _Turn("user", [Text("(continued)")]))
    if turns[-1].role != "user":
        turns.append(_Turn("user", [Text("Continue")]))
    return turns


class _Encoder:
    def __init__(self, model_id: str, origin: str) -> None:
        self.model_id, self.origin = model_id, origin

    def user(self, turn: _Turn, calls: set[str], where: str, prefix: str = "") -> dict[str, Any]:
        texts: list[str] = [prefix] if prefix else []
        images: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for index, part in enumerate(turn.parts):
            at = f"{where}.parts[{index}]"
            if isinstance(part, Text):
                if part.text:
                    texts.append(part.text)
            elif isinstance(part, Image):
                images.append(_image(part, at))
            elif isinstance(part, ToolResult):
                images.extend(_image(p, at) for p in part.content if isinstance(p, Image))
                output = _texts(part.content)
                if part.call_id in calls:
                    status = "error" if part.is_error else "success"
                    results.append({"toolUseId": part.call_id, "content": [{"text": output}], "status": status})
                else:  # Kiro refuses a result for a call it never saw: keep what the tool said as text
                    texts.append(f"[result of tool call {part.call_id}]\n{output}")
            elif isinstance(part, ToolCall):
                raise TranslationError(f"{at}: tool calls belong in assistant messages")
        content = "\n\n".join(texts) or ("Tool results provided." if results else "(empty)")
        message: dict[str, Any] = {"content": content, "modelId": self.model_id, "origin": self.origin}
        if images:
            message["images"] = images
        if results:
            message["userInputMessageContext"] = {"toolResults": results}
        return message

    @staticmethod
    def assistant(turn: _Turn, where: str) -> dict[str, Any]:
        texts: list[str] = []
        uses: list[dict[str, Any]] = []
        for index, part in enumerate(turn.parts):
            if isinstance(part, Text) and part.text:
                texts.append(part.text)
            elif isinstance(part, ToolCall):
                arguments = part.input(f"{where}.parts[{index}]")
                uses.append({"toolUseId": part.id, "name": part.name, "input": arguments})
            # thinking and images cannot be replayed to Kiro; they are left out
        message: dict[str, Any] = {"content": "\n\n".join(texts) or "(empty)"}
        if uses:
            message["toolUses"] = uses
        return message


def encode_conversation(
    request: Request, profile_arn: str | None = None, origin: str = ORIGIN, conversation_id: str | None = None
) -> dict[str, Any]:
    """The ``generateAssistantResponse`` body for a canonical request."""
    encoder = _Encoder(kiro_model_id(request.model), origin)
    system = "\n\n".join(t.text for t in request.system if t.text)
    turns = _turns(request.messages)
    history: list[dict[str, Any]] = []
    calls: set[str] = set()
    for index, turn in enumerate(turns[:-1]):
        where = f"turns[{index}]"
        if turn.role == "user":
            history.append({"userInputMessage": encoder.user(turn, calls, where, system if index == 0 else "")})
            calls = set()
        else:
            message = encoder.assistant(turn, where)
            history.append({"assistantResponseMessage": message})
            calls = {use["toolUseId"] for use in message.get("toolUses", [])}
    current = encoder.user(turns[-1], calls, f"turns[{len(turns) - 1}]", system if len(turns) == 1 else "")
    if request.tools and request.tool_choice != "none":
        context = current.setdefault("userInputMessageContext", {})
        context["tools"] = [_tool_spec(tool) for tool in request.tools]
    state: dict[str, Any] = {
        "chatTriggerType": "MANUAL",
        "conversationId": conversation_id or str(uuid.uuid4()),
        "currentMessage": {"userInputMessage": current},
        "history": history,
    }
    body: dict[str, Any] = {"conversationState": state}
    if profile_arn:
        body["profileArn"] = profile_arn
    return body


# -- responses ------------------------------------------------------------------------------------------


def _usage(payload: dict[str, Any]) -> Usage | None:
    """Token counts from an event that carries them (``tokenUsage`` or flat ``inputTokens``/``outputTokens``)."""
    counts = payload.get("tokenUsage")
    if not isinstance(counts, dict):
        counts = payload
    if not any(isinstance(counts.get(k), int) for k in ("inputTokens", "uncachedInputTokens", "outputTokens")):
        return None
    cached = int(counts.get("cacheReadInputTokens") or 0)
    written = int(counts.get("cacheWriteInputTokens") or 0)
    if isinstance(counts.get("uncachedInputTokens"), int):
        prompt = int(counts["uncachedInputTokens"]) + cached + written
    else:
        prompt = int(counts.get("inputTokens") or 0)
    return Usage(prompt, int(counts.get("outputTokens") or 0), cached)


class KiroStreamDecoder(FramedEventDecoder):
    """Kiro's event stream (raw bytes, any chunking) as canonical events.

    ``MessageStart`` comes with the first event; ``Finish`` only from ``close``, since Kiro has no closing event
    (the HTTP body simply ends). A framing error, an in-stream exception or a cut stream become ``StreamError``.
    """

    vendor = "Kiro"

    def __init__(self, model: str = "") -> None:
        super().__init__()
        self.model = model
        self.started = False
        self.tools: dict[str, int] = {}  # toolUseId -> index
        self.usage: Usage | None = None
        self.context_share: float | None = None

    def finish(self) -> list[Event]:
        events = self._start()
        usage = self.usage
        if usage is None and self.context_share is not None:
            usage = Usage(input=round(self.context_share / 100 * CONTEXT_WINDOW))
        events.append(Finish("tool_calls" if self.tools else "stop", usage or Usage()))
        return events

    def _start(self) -> list[Event]:
        if self.started:
            return []
        self.started = True
        return [MessageStart(f"msg_{uuid.uuid4().hex[:24]}", self.model)]

    def frame(self, frame: Frame) -> list[Event]:
        kind = frame.header(":message-type") or "event"
        if kind == "error":
            self.done = True
            code = frame.header(":error-code") or "error"
            return [StreamError(500, f"{code}: {frame.header(':error-message') or 'Kiro stream error'}")]
        try:
            payload = orjson.loads(frame.payload) if frame.payload else {}
        except orjson.JSONDecodeError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        if kind == "exception":
            self.done = True
            name = frame.header(":exception-type") or "Exception"
            name = name[0].upper() + name[1:]
            message = payload.get("message") or payload.get("Message") or name
            return [StreamError(_EXCEPTION_STATUS.get(name, 500), f"{name}: {message}")]
        event_type = frame.header(":event-type") or ""
        inner = payload.get(event_type)
        if isinstance(inner, dict):  # some clients see the event wrapped in its own name
            payload = inner
        if event_type == "assistantResponseEvent":
            text = payload.get("content")
            return [*self._start(), TextDelta(text)] if isinstance(text, str) and text else []
        if event_type == "toolUseEvent":
            return self._tool(payload)
        if event_type == "contextUsageEvent":
            share = payload.get("contextUsagePercentage")
            if isinstance(share, int | float):
                self.context_share = float(share)
            return []
        usage = _usage(payload)
        if usage is not None:
            self.usage = usage
        return []  # meteringEvent (credits), followupPromptEvent, codeReferenceEvent, ...: nothing to say

    def _tool(self, payload: dict[str, Any]) -> list[Event]:
        ident = str(payload.get("toolUseId") or "")
        if not ident:
            return []
        events = self._start()
        index = self.tools.get(ident)
        if index is None:
            index = self.tools[ident] = len(self.tools)
            events.append(ToolCallStart(index, ident, str(payload.get("name") or "")))
        piece = payload.get("input")
        if isinstance(piece, dict):
            piece = orjson.dumps(piece).decode()
        if isinstance(piece, str) and piece:
            events.append(ToolCallDelta(index, piece))
        return events


def collect(events: list[Event], model: str = "") -> Response:
    """The whole response the events describe; raises :class:`UpstreamFailed` when one is a ``StreamError``."""
    ident, parts, usage = "", list[Part](), Usage()
    calls: dict[int, ToolCall] = {}
    finish: FinishReason = "stop"
    for event in events:
        if isinstance(event, StreamError):
            raise UpstreamFailed(event.status, event.message)
        if isinstance(event, MessageStart):
            ident, model = event.id, event.model or model
        elif isinstance(event, TextDelta):
            if parts and isinstance(parts[-1], Text):
                parts[-1] = Text(parts[-1].text + event.text)
            else:
                parts.append(Text(event.text))
        elif isinstance(event, ToolCallStart):
            calls[event.index] = ToolCall(event.id, event.name, "")
            parts.append(calls[event.index])
        elif isinstance(event, ToolCallDelta) and event.index in calls:
            calls[event.index].arguments += event.arguments
        elif isinstance(event, Finish):
            finish = event.reason or finish
            usage = event.usage or usage
    return Response(ident or f"msg_{uuid.uuid4().hex[:24]}", model, parts, finish, usage)


class KiroCodec(CodecBase):
    """The upstream half of the codec protocol for Kiro (no client ever speaks Kiro's format to us).

    ``profile_arn`` and ``origin`` are per credential: build one codec per Kiro credential, or pass
    ``profile_arn`` to :meth:`encode_request`. Kiro answers with an event stream even when asked for a whole
    response: :meth:`decode_body` collects one.
    """

    name = "kiro"
    stream_end = StreamEnd()  # never passed through (not SSE): its decoder judges the end, no frame half-read
    keepalive = SSE_COMMENT
    vendor_headers: tuple[str, ...] = ()
    json_mode = False
    context_window_markers = (b"CONTENT_LENGTH_EXCEEDS_THRESHOLD", b"Input is too long")

    def __init__(self, profile_arn: str | None = None, origin: str = ORIGIN) -> None:
        self.profile_arn = profile_arn
        self.origin = origin

    def upstream_path(self, model: str, stream: bool) -> str:
        return API_PATH

    def encode_request(self, request: Request, profile_arn: str | None = None) -> bytes:
        body = encode_conversation(request, profile_arn or self.profile_arn, self.origin)
        return orjson.dumps(body)

    def stream_decoder(self, model: str = "") -> KiroStreamDecoder:
        return KiroStreamDecoder(model)

    def with_tokens(self, tokens: TokenSet) -> KiroCodec:
        profile_arn = tokens.extra.get("profile_arn")
        return KiroCodec(str(profile_arn) if profile_arn else None, self.origin)

    def auth_headers(self, key: str) -> dict[str, str]:
        """The bearer token and what the Kiro IDE's SDK sends with it, a fresh invocation id each call."""
        return {"Authorization": f"Bearer {key}", **request_headers()}

    def collect(self, events: list[Event], model: str = "") -> Response:
        return collect(events, model)

    def decode_body(self, body: bytes) -> Response:
        """A whole answer: every frame of the body, collected; raises UpstreamFailed on an in-stream error."""
        decoder = self.stream_decoder()
        return collect(decoder.feed(body) + decoder.close())

    def decode_response(self, body: dict[str, Any]) -> Response:
        raise TranslationError("Kiro answers in event-stream frames, not JSON")
