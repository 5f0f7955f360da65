"""AWS Bedrock's Converse API as an upstream codec, and Titan / Cohere embeddings through InvokeModel.

Chat goes to ``POST /model/{modelId}/converse`` (a JSON answer) or ``/converse-stream`` (an AWS event stream,
:mod:`.eventstream`); requests are signed with SigV4 over the final body (:mod:`..aws`). Shapes follow botocore's
``bedrock-runtime`` service model, which the test fake validates against.

Decisions worth knowing:

* Converse wants user/assistant alternation starting with a user turn: same-role neighbours are merged, and a
  conversation opening with the assistant gets a ``(continued)`` user turn first. Empty text blocks are refused
  by Bedrock, so they are left out (a turn left empty says ``(empty)``).
* Images are sent as bytes (base64 in JSON): URLs cannot be, and are refused as the client's error.
* Reasoning is Claude's extended thinking, asked for in ``additionalModelRequestFields``; other model families
  get no reasoning field. Unsigned reasoning cannot be replayed and is left out of the history.
* Structured output has no portable Converse field: it is asked for in the system prompt (``json_mode`` off).
* Converse refuses tool blocks in the history without a tool list: ``tool_choice: none`` leaves the tools out
  unless the history holds tool calls (the choice then stays the model's), and a request with tool calls in its
  history but no tools declares the tools called, with a loose schema.
* A stream's stop reason (``messageStop``) is held until its usage (``metadata``) arrives, so clients see one
  finish carrying both.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from typing import Any
from urllib.parse import quote

import orjson

from ..aws import AwsIdentity, StaticKeys, sigv4_headers
from ..config import BedrockCredential
from ..oauth.base import TokenError
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
    Thinking,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    TranslationError,
    Usage,
    bounded,
    thinking_budget,
)
from .codec import Codec, CodecBase, CredentialView, ErrorKind, UpstreamCall
from .embeddings import Answer, EmbeddingsRequest, EmbeddingsWire, encode_vector
from .eventstream import FramedEventDecoder
from .eventstream import Message as Frame

SERVICE = "bedrock"  # the SigV4 signing name of bedrock-runtime
_IMAGE_FORMATS = frozenset({"png", "jpeg", "gif", "webp"})
_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls", "max_tokens": "length",
    "model_context_window_exceeded": "length", "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}  # fmt: skip
#: The HTTP status each modelled exception carries (botocore's service model), for in-stream exceptions.
EXCEPTION_STATUS = {
    "throttlingException": 429, "serviceUnavailableException": 503, "internalServerException": 500,
    "modelStreamErrorException": 424, "validationException": 400, "modelTimeoutException": 408,
}  # fmt: skip
#: Phrases of a ValidationException that says the request is too long for the model.
CONTEXT_WINDOW_MARKERS = (b"too long", b"context window", b"context length", b"maximum context", b"too many tokens")
#: Claude's extended thinking needs room to answer beyond its budget: maxTokens is raised to budget + this.
ANSWER_ROOM = 4096


def model_path(model: str, action: str) -> str:
    """``/model/{modelId}/{action}``, the id percent-encoded as botocore encodes a URI label (``:`` and ``/``)."""
    return f"/model/{quote(model, safe='-_.~')}/{action}"


# -- requests -------------------------------------------------------------------------------------------


def _image(image: Image, where: str) -> dict[str, Any]:
    if image.data is None:
        raise TranslationError(f"{where}: Bedrock takes inline (base64) images only, not URLs")
    kind = image.media_type.removeprefix("image/").lower()
    kind = "jpeg" if kind == "jpg" else kind
    if kind not in _IMAGE_FORMATS:
        raise TranslationError(f"{where}: image type {image.media_type!r} is not accepted (png, jpeg, gif, webp)")
    if not image.data:
        raise TranslationError(f"{where}: the image is empty")
    return {"image": {"format": kind, "source": {"bytes": image.data}}}


def _result(part: ToolResult, where: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for index, item in enumerate(part.content):
        if isinstance(item, Text):
            if item.text:
                content.append({"text": item.text})
        else:
            content.append(_image(item, f"{where}.content[{index}]"))
    result: dict[str, Any] = {"toolUseId": part.call_id, "content": content or [{"text": "(empty)"}]}
    if part.is_error:
        result["status"] = "error"
    return result


def _block(part: Part, where: str) -> dict[str, Any] | None:
    if isinstance(part, Text):
        return {"text": part.text} if part.text else None
    if isinstance(part, Image):
        return _image(part, where)
    if isinstance(part, ToolCall):
        return {"toolUse": {"toolUseId": part.id, "name": part.name, "input": part.input(where)}}
    if isinstance(part, ToolResult):
        return {"toolResult": _result(part, where)}
    if part.signature:  # Thinking: only Bedrock's own, signed, can be replayed
        return {"reasoningContent": {"reasoningText": {"text": part.text, "signature": part.signature}}}
    return None


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    encoded: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        blocks = [b for i, p in enumerate(message.parts) if (b := _block(p, f"{where}.content[{i}]")) is not None]
        if encoded and encoded[-1]["role"] == message.role:
            encoded[-1]["content"].extend(blocks)
        else:
            encoded.append({"role": message.role, "content": blocks})
    if not encoded or encoded[0]["role"] != "user":
        encoded.insert(0, {"role": "user", "content": [{"text": "(continued)"}]})
    for turn in encoded:
        if not turn["content"]:
            turn["content"].append({"text": "(empty)"})
    return encoded


def _called(messages: list[dict[str, Any]]) -> list[str]:
    """The names of the tools the history calls, in order of first call."""
    names = [block["toolUse"]["name"] for m in messages for block in m["content"] if "toolUse" in block]
    return list(dict.fromkeys(names))


def _tool_config(request: Request, messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Converse refuses tool blocks in the history without a tool list: when the request offers none (or says
    ``none``), the list is what the history needs (the tools it called, declared loosely), and no choice is set."""
    called = _called(messages)
    if request.tool_choice == "none" or not request.tools:
        if not called:
            return None
        if not request.tools:
            return {"tools": [{"toolSpec": {"name": name, "inputSchema": {"json": {"type": "object"}}}}
                              for name in called]}  # fmt: skip
    tools = []
    for tool in request.tools:
        spec: dict[str, Any] = {"name": tool.name, "inputSchema": {"json": bounded(tool.parameters, tool.name)}}
        if tool.description:
            spec["description"] = tool.description
        tools.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": tools}
    choice = request.tool_choice
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif choice is not None and choice != "none":
        config["toolChoice"] = {"tool": {"name": choice}}
    return config


def encode_converse(request: Request) -> dict[str, Any]:
    """The Converse / ConverseStream body for a canonical request (the model id goes in the path)."""
    messages = _messages(request.messages)
    body: dict[str, Any] = {"messages": messages}
    system = [{"text": t.text} for t in request.system if t.text]
    if system:
        body["system"] = system
    inference: dict[str, Any] = {}
    if request.max_tokens is not None:
        inference["maxTokens"] = request.max_tokens
    if request.temperature is not None:
        inference["temperature"] = request.temperature
    if request.top_p is not None:
        inference["topP"] = request.top_p
    if request.stop:
        inference["stopSequences"] = [s for s in request.stop if s]
    budget = thinking_budget(request.reasoning)
    if budget > 0 and "anthropic.claude" in request.model:
        body["additionalModelRequestFields"] = {"thinking": {"type": "enabled", "budget_tokens": budget}}
        if inference.get("maxTokens", 0) <= budget:
            inference["maxTokens"] = budget + ANSWER_ROOM
    if inference:
        body["inferenceConfig"] = inference
    tools = _tool_config(request, messages)
    if tools is not None:
        body["toolConfig"] = tools
    return body


# -- responses ------------------------------------------------------------------------------------------


def _usage(counts: Any) -> Usage:
    if not isinstance(counts, dict):
        return Usage()
    return Usage.with_caches(
        int(counts.get("inputTokens") or 0),
        int(counts.get("outputTokens") or 0),
        int(counts.get("cacheReadInputTokens") or 0),
        int(counts.get("cacheWriteInputTokens") or 0),
    )


def _finish(reason: Any) -> FinishReason:
    return _STOP_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"


def decode_converse(body: dict[str, Any]) -> Response:
    """A Converse answer; a malformed one raises (the exchange's ``bad_response``)."""
    content = body["output"]["message"]["content"]
    parts: list[Part] = []
    for block in content:
        if "text" in block:
            parts.append(Text(str(block["text"])))
        elif "toolUse" in block:
            use = block["toolUse"]
            parts.append(ToolCall(str(use["toolUseId"]), str(use["name"]), orjson.dumps(use.get("input", {})).decode()))
        elif "reasoningContent" in block:
            reasoning = block["reasoningContent"].get("reasoningText")
            if isinstance(reasoning, dict):
                parts.append(Thinking(str(reasoning.get("text", "")), reasoning.get("signature") or None))
    ident = f"msg_{uuid.uuid4().hex[:24]}"
    return Response(ident, "", parts, _finish(body.get("stopReason")), _usage(body.get("usage")))


class BedrockStreamDecoder(FramedEventDecoder):
    """ConverseStream's event stream (raw bytes, any chunking) as canonical events.

    A framing error, an in-stream exception or a stream cut mid-frame become ``StreamError``; a stream that ends
    without ``messageStop`` yields no finish, so the relay knows it was cut.
    """

    vendor = "Bedrock"

    def __init__(self) -> None:
        super().__init__()
        self.started = False
        self.stop: FinishReason | None = None  # held until the usage that follows it
        self.tools: dict[int, int] = {}  # contentBlockIndex -> tool call index

    def finish(self) -> list[Event]:
        return [Finish(self.stop)] if self.stop is not None else []

    def _start(self) -> list[Event]:
        if self.started:
            return []
        self.started = True
        return [MessageStart(f"msg_{uuid.uuid4().hex[:24]}", "")]

    def frame(self, frame: Frame) -> list[Event]:
        payload = orjson.loads(frame.payload) if frame.payload else {}
        if not isinstance(payload, dict):
            raise ValueError("a Bedrock stream event is not a JSON object")
        kind = frame.header(":message-type")
        if kind != "event":
            self.done = True
            name = frame.header(":exception-type") or frame.header(":error-code") or "error"
            message = payload.get("message") or payload.get("Message") or frame.header(":error-message") or name
            return [StreamError(EXCEPTION_STATUS.get(name, 502), f"{name}: {message}")]
        event_type = frame.header(":event-type")
        if event_type == "messageStart":
            return self._start()
        if event_type == "contentBlockStart":
            use = payload["start"].get("toolUse")
            if not isinstance(use, dict):
                return []
            index = self.tools[int(payload["contentBlockIndex"])] = len(self.tools)
            return [*self._start(), ToolCallStart(index, str(use["toolUseId"]), str(use["name"]))]
        if event_type == "contentBlockDelta":
            return [*self._start(), *self._delta(int(payload["contentBlockIndex"]), payload["delta"])]
        if event_type == "messageStop":
            self.stop = _finish(payload.get("stopReason"))
            return []
        if event_type == "metadata":
            reason, self.stop = self.stop, None
            self.done = reason is not None
            return [Finish(reason, _usage(payload.get("usage")))]
        return []  # contentBlockStop, and events a newer service version adds

    def _delta(self, block: int, delta: dict[str, Any]) -> list[Event]:
        if isinstance(delta.get("text"), str):
            return [TextDelta(delta["text"])] if delta["text"] else []
        if isinstance(delta.get("toolUse"), dict) and block in self.tools:
            piece = delta["toolUse"].get("input")
            return [ToolCallDelta(self.tools[block], piece)] if isinstance(piece, str) and piece else []
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict):
            if isinstance(reasoning.get("text"), str) and reasoning["text"]:
                return [ThinkingDelta(reasoning["text"])]
            if isinstance(reasoning.get("signature"), str):
                return [ThinkingDelta(signature=reasoning["signature"])]
        return []


def error_message(body: bytes) -> str | None:
    """A Bedrock error's message (``{"message": ...}``, its exception name in ``__type`` when given)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    message = document.get("message") or document.get("Message")
    if not isinstance(message, str) or not message:
        return None
    kind = document.get("__type")
    return f"{kind.rsplit('#', 1)[-1]}: {message}" if isinstance(kind, str) and kind else message


# -- embeddings -----------------------------------------------------------------------------------------

#: Cohere's embed models on Bedrock take at most this many texts per call.
COHERE_BATCH = 96
#: What Cohere is told the texts are for (OpenAI's API has no such field): stored documents, the common case.
COHERE_INPUT_TYPE = "search_document"


class BedrockEmbeddings:
    """Embeddings through InvokeModel: Titan (``amazon.titan-embed-*``, a text a call), Cohere (``cohere.embed-*``).

    Titan reports its input tokens; Cohere's body does not (Bedrock puts them in a header), so Cohere's are
    estimated, four characters a token, and the answer says so.
    """

    passes_through = False

    def path(self, model: str) -> str:
        return model_path(model, "invoke")

    def encode(self, request: EmbeddingsRequest, model: str) -> bytes:
        if request.tokens:
            raise TranslationError("input: token arrays are only served by OpenAI-shaped providers; send text")
        if _is_cohere(model):
            if len(request.texts) > COHERE_BATCH:
                raise TranslationError(f"input: Cohere on Bedrock embeds at most {COHERE_BATCH} texts at once")
            body: dict[str, Any] = {"texts": list(request.texts), "input_type": COHERE_INPUT_TYPE}
            if request.dimensions is not None:
                body["output_dimension"] = request.dimensions
            return orjson.dumps(body)
        if len(request.texts) != 1:
            raise TranslationError("input: Titan embedding models on Bedrock embed one text per request")
        titan: dict[str, Any] = {"inputText": request.texts[0]}
        if request.dimensions is not None:
            titan["dimensions"] = request.dimensions
        return orjson.dumps(titan)

    def decode(self, body: bytes, request: EmbeddingsRequest, model: str) -> Answer:
        document = orjson.loads(body)  # ``model`` is the client's name for it: the answer's shape tells the family
        if "embeddings" in document:  # Cohere
            vectors = document["embeddings"]
            if isinstance(vectors, dict):  # embeddings_by_type
                vectors = vectors["float"]
            tokens, estimated = sum(math.ceil(len(text) / 4) for text in request.texts), True
        else:
            vectors, tokens, estimated = [document["embedding"]], int(document["inputTextTokenCount"]), False
        if not isinstance(vectors, list) or len(vectors) != len(request.texts):
            raise ValueError("Bedrock answered another number of embeddings than it was sent")
        data = []
        for index, values in enumerate(vectors):
            if not isinstance(values, list) or not all(_is_float(v) for v in values):
                raise ValueError("an embedding's values are not numbers")
            data.append({"object": "embedding", "index": index, "embedding": encode_vector(values, request.encoding)})
        answer = {"object": "list", "data": data, "model": model,
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip
        return Answer(orjson.dumps(answer), tokens, estimated)


def _is_cohere(model: str) -> bool:
    return "cohere.embed" in model


def _is_float(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- the codec ------------------------------------------------------------------------------------------

log = logging.getLogger("cliproxy.bedrock")


class BedrockCodec(CodecBase):
    """The upstream half of the codec protocol for Bedrock's Converse API (no client speaks it to us).

    Each config entry has its own (``for_entry``), carrying the entry's AWS identity; every request is signed
    over its final body (``authenticate``).
    """

    name = "bedrock"
    stream_end = StreamEnd()  # never passed through (not SSE): its decoder judges the end
    keepalive = SSE_COMMENT
    vendor_headers: tuple[str, ...] = ()
    json_mode = False
    authenticates_each_request = True
    embeddings: EmbeddingsWire | None = BedrockEmbeddings()
    context_window_markers = CONTEXT_WINDOW_MARKERS
    counts_tokens = True

    def __init__(self, identity: AwsIdentity | None = None) -> None:
        self.identity = identity

    def for_entry(self, entry: object) -> BedrockCodec:
        """The entry's codec. Its keys are looked for now when this runs off the event loop (the reloader's thread);
        on the loop, or when none are found yet, the first request looks for them, in a thread."""
        if not isinstance(entry, BedrockCredential):
            return self
        static = None
        if entry.access_key_id is not None and entry.secret_access_key is not None:
            token = entry.session_token.get_secret_value() if entry.session_token is not None else None
            static = StaticKeys(entry.access_key_id.get_secret_value(), entry.secret_access_key.get_secret_value(),
                                token)  # fmt: skip
        identity = AwsIdentity(entry.region, profile=entry.profile, static=static)
        if not _on_event_loop():
            try:
                identity.resolve()
            except TokenError as error:
                log.warning("bedrock (%s, %s): %s; looked for again on the next request", entry.name or "unnamed",
                            entry.region, error)  # fmt: skip
        return BedrockCodec(identity)

    def upstream_path(self, model: str, stream: bool) -> str:
        return model_path(model, "converse-stream" if stream else "converse")

    def encode_request(self, request: Request) -> bytes:
        return orjson.dumps(encode_converse(request))

    def decode_response(self, body: dict[str, Any]) -> Response:
        return decode_converse(body)

    def stream_decoder(self) -> BedrockStreamDecoder:
        return BedrockStreamDecoder()

    async def authenticate(self, call: UpstreamCall, credential: CredentialView) -> None:
        if self.identity is None:
            raise TokenError("bedrock: no AWS identity for this credential")
        keys = await self.identity.keys()
        call.headers.update(sigv4_headers(keys, SERVICE, self.identity.region, call.method, call.url, call.headers,
                                          call.body))  # fmt: skip

    def count_request(self, inbound: Codec, payload: dict[str, Any], raw: bytes | bytearray, model: str
                      ) -> tuple[str, bytes | bytearray]:  # fmt: skip
        """CountTokens takes the Converse body's conversation (no sampling settings) under ``input.converse``."""
        request = inbound.decode_request(payload)
        request.model = model
        body = encode_converse(request)
        converse = {key: body[key] for key in ("messages", "system", "toolConfig", "additionalModelRequestFields")
                    if key in body}  # fmt: skip
        return model_path(model, "count-tokens"), orjson.dumps({"input": {"converse": converse}})

    def count_of(self, body: dict[str, Any]) -> int | None:
        count = body.get("inputTokens")
        return count if isinstance(count, int) and not isinstance(count, bool) else None

    def classify_error(self, status: int, body: bytes) -> ErrorKind:
        if status == 424:  # ModelErrorException: the model failed this time, another try may not
            return "retryable"
        return super().classify_error(status, body)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
