"""The one internal model every wire format translates to and from.

Each format has one codec (decode and encode, request and response, whole and streamed); a client speaking
format A reaches a provider speaking format B through A's decoder and B's encoder, never a pairwise translator.
Tool results live in user messages (as in Anthropic's Messages API); tool-call arguments stay the JSON text the
model produced, so nothing is re-serialised or reordered on the way through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import orjson

#: How deep a free-form JSON value (a tool's schema, a call's arguments) may nest; real schemas use a handful.
#: Encoders recurse into such values, and orjson writes no more than 254 levels.
MAX_DEPTH = 64
T = TypeVar("T")


def bounded(value: T, where: str) -> T:
    """``value`` itself, once it is known to nest no deeper than ``MAX_DEPTH``."""
    level: list[Any] = [value]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for node in level if isinstance(node, dict | list)
            for child in (node.values() if isinstance(node, dict) else node)
        ]  # fmt: skip
        if not level:
            return value
    if any(isinstance(node, dict | list) for node in level):
        raise TranslationError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    return value


# -- content --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Image:
    """An image, inline (base64 ``data``) or by ``url``."""

    media_type: str
    data: str | None = None
    url: str | None = None


@dataclass(slots=True)
class Thinking:
    """Reasoning the model showed; ``signature`` is the vendor's opaque proof, passed back untouched."""

    text: str
    signature: str | None = None


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model produced it
    namespace: str | None = None  # Responses' namespace tools: the call's name is then the name inside it

    def input(self, where: str) -> dict[str, Any]:
        """The arguments as the object vendors that take structured input (Anthropic, Kiro) need."""
        if not self.arguments.strip():
            return {}
        try:
            value = orjson.loads(self.arguments)
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise TranslationError(f"{where}: tool call {self.id!r} arguments are not a JSON object")
        return bounded(value, f"{where}: tool call {self.id!r} arguments")


@dataclass(slots=True)
class ToolResult:
    call_id: str
    content: list[Text | Image]
    is_error: bool = False
    name: str | None = None  # Gemini answers a call by function name, not by id


Part = Text | Image | Thinking | ToolCall | ToolResult


@dataclass(slots=True)
class Message:
    role: Literal["user", "assistant"]
    parts: list[Part]


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None
    parameters: dict[str, Any]  # a JSON Schema object
    namespace: str | None = None  # a function of a Responses namespace, flattened: ``name`` is qualified


def qualified(namespace: str, name: str) -> str:
    """The plain function name a namespaced function goes by where namespaces do not exist (every vendor's limits)."""
    return f"{namespace}__{name}"


def restore_namespace(call: ToolCall, tools: list[Tool]) -> ToolCall:
    """A call of a flattened namespace function, named again as the client declared it (namespace, then name)."""
    for tool in tools:
        if tool.namespace is not None and tool.name == call.name:
            call.namespace, call.name = tool.namespace, call.name[len(tool.namespace) + 2 :]
            break
    return call


ToolChoice = Literal["auto", "none", "required"] | str  # any other string names the one tool to call


@dataclass(slots=True)
class JsonOutput:
    """The answer must be one JSON object: of any shape (``schema`` None), or matching a JSON Schema."""

    schema: dict[str, Any] | None = None
    name: str = "response"
    strict: bool | None = None

    def instructions(self) -> Text:
        """The constraint as a system instruction, for vendors without a JSON mode (Anthropic, Kiro)."""
        text = "Answer with one JSON object and nothing else: no prose, no code fences."
        if self.schema is not None:
            text += " It must match this JSON Schema: " + orjson.dumps(self.schema).decode()
        return Text(text)


@dataclass(slots=True)
class Reasoning:
    """How hard to think: a token ``budget``, an ``effort`` level, or both (0 turns thinking off)."""

    budget: int | None = None
    effort: str | None = None


#: cliproxyapi++'s thinking levels and the budgets they stand for.
THINKING_LEVELS = {
    "none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 32768, "max": 128000,
}  # fmt: skip


def thinking_budget(reasoning: Reasoning | None) -> int:
    """The thinking tokens a request asks for, by budget or by level (0: none), for vendors that take a budget."""
    if reasoning is None:
        return 0
    if reasoning.budget is not None:
        return max(reasoning.budget, 0)
    if reasoning.effort is None:
        return 0
    if reasoning.effort not in THINKING_LEVELS:
        raise TranslationError(f"reasoning.effort: {reasoning.effort!r} is not a known thinking level")
    return THINKING_LEVELS[reasoning.effort]


@dataclass(slots=True)
class Request:
    model: str
    messages: list[Message]
    system: list[Text] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    reasoning: Reasoning | None = None
    parallel_tool_calls: bool | None = None
    stream_usage: bool = False  # the client asked for usage in the stream (OpenAI's stream_options)
    output: JsonOutput | None = None  # structured output (response_format, text.format, responseSchema)
    hosted_tools: list[str] = field(default_factory=list)  # tools the vendor runs itself (web_search): left out


# -- responses ------------------------------------------------------------------------------------------

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


USAGE_BOUND = 1 << 40


@dataclass(slots=True)
class Usage:
    """Tokens of one answer. ``input`` counts every prompt token; ``cached`` (read from a prompt cache) and
    ``cache_write`` (written to one) are parts of it, priced apart."""

    input: int = 0
    output: int = 0
    cached: int = 0
    reasoning: int = 0
    cache_write: int = 0

    @classmethod
    def with_caches(cls, uncached: int, output: int, cached: int, written: int, reasoning: int = 0) -> Usage:
        """A wire's counts that report the prompt's cache reads and writes apart from its other tokens."""
        return cls(uncached + cached + written, output, cached, reasoning, written)

    @property
    def total(self) -> int:
        return self.input + self.output

    def bounded(self) -> Usage:
        """The counts an upstream reported, each within [0, 2**40]: a negative one would refund a budget (and
        Prometheus refuses to count it), an absurd one would overflow Redis' integers."""
        counts = (self.input, self.output, self.cached, self.reasoning, self.cache_write)
        if all(0 <= count <= USAGE_BOUND for count in counts):
            return self
        return Usage(*(min(max(0, count), USAGE_BOUND) for count in counts))

    def merged(self, later: Usage | None) -> Usage:
        """This report and a later one of the same answer: streams report running totals, or parts (Anthropic's
        input at the start, its output at the end), so each count is the largest seen."""
        if later is None:
            return self
        return Usage(max(self.input, later.input), max(self.output, later.output), max(self.cached, later.cached),
                     max(self.reasoning, later.reasoning), max(self.cache_write, later.cache_write))  # fmt: skip


@dataclass(slots=True)
class Response:
    id: str
    model: str
    parts: list[Part]
    finish: FinishReason = "stop"
    usage: Usage = field(default_factory=Usage)
    stop_sequence: str | None = None


# -- stream events --------------------------------------------------------------------------------------


@dataclass(slots=True)
class MessageStart:
    id: str
    model: str
    usage: Usage | None = None


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    text: str = ""
    signature: str | None = None


@dataclass(slots=True)
class ToolCallStart:
    """A tool call begins; ``index`` counts tool calls within the message from 0."""

    index: int
    id: str
    name: str


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    arguments: str


@dataclass(slots=True)
class Finish:
    """The message is complete. Usage may also come alone, in a later ``Finish`` with ``reason=None``."""

    reason: FinishReason | None
    usage: Usage | None = None
    stop_sequence: str | None = None


@dataclass(slots=True)
class StreamError:
    status: int
    message: str


Event = MessageStart | TextDelta | ThinkingDelta | ToolCallStart | ToolCallDelta | Finish | StreamError


class StreamEnd:
    """Spots a format's terminal event in a run of whole SSE events, without parsing them.

    Each pattern begins with a literal, which the regex engine scans for fast (this runs on every chunk of a
    pass-through stream). ``line_start`` counts only at the start of a line: JSON escapes its newlines, so text
    inside a string (a model explaining SSE) cannot land there. Quotes are escaped too, so ``"key": "`` with bare
    quotes, as ``anywhere`` patterns are written, can only be a key of the document itself.
    """

    __slots__ = ("anywhere", "first_line", "later_line")

    def __init__(self, anywhere: bytes | None = None, line_start: bytes | None = None) -> None:
        self.anywhere = re.compile(anywhere) if anywhere else None
        self.first_line = re.compile(line_start) if line_start else None
        self.later_line = re.compile(b"\n" + line_start) if line_start else None

    def __call__(self, events: bytes) -> bool:
        if self.anywhere is not None and self.anywhere.search(events):
            return True
        if self.first_line is None or self.later_line is None:
            return False
        return bool(self.first_line.match(events) or self.later_line.search(events))


class TranslationError(ValueError):
    """A request or response one format cannot express in another; answered as a 400 in the client's format."""


def reencode(payload: dict[str, Any], model: str) -> bytes:
    """A client's body passed through with another model id; one too deep to write again is the client's error."""
    try:
        return orjson.dumps({**payload, "model": model})
    except orjson.JSONEncodeError as error:
        raise TranslationError(f"the request body cannot be passed on: {error}") from None


# -- the pieces codecs are built from (the interface itself is in .codec) ------------------------------


class EventDecoder(Protocol):
    """Turns one upstream SSE event (its ``event:`` name, if any, and ``data:``) into canonical events."""

    def feed(self, event: str | None, data: bytes) -> list[Event]: ...


class StreamEncoder(Protocol):
    """Turns canonical events into the client's SSE bytes; ``close`` ends the stream in that format."""

    def encode(self, event: Event) -> bytes: ...

    def close(self) -> bytes: ...


class UpstreamFailed(Exception):
    """A whole upstream answer (HTTP 200) that carries an error instead of a response (an in-stream exception)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


#: How a JSON ``usage`` object begins, in the two spellings providers send (not the ``"usage":null`` of most chunks).
USAGE_MARKERS: tuple[bytes, ...] = (b'"usage":{', b'"usage": {')


def usage_object(document: Any, envelope: str = "") -> dict[str, Any] | None:
    """A body's ``usage`` object, or the one inside the ``envelope`` object a stream event carries it in."""
    if not isinstance(document, dict):
        return None
    inner = document.get(envelope) if envelope else None
    usage = inner.get("usage") if isinstance(inner, dict) else document.get("usage")
    return usage if isinstance(usage, dict) else None


#: What keeps an idle client stream open: an SSE comment, which every SSE parser skips...
SSE_COMMENT = b": keep-alive\n\n"
#: ...except google-genai's and litellm's Gemini parsers, which take any non-``data:`` line for JSON.
BLANK_LINE = b"\n"
