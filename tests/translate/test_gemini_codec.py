"""The Gemini and Vertex codecs: both directions, whole and streamed, checked against a fake that validates the wire
format as Google's API does, and the fake itself checked against Google's own SDK."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cliproxy_proxy.translate.canonical import (
    Event,
    Finish,
    Image,
    Message,
    MessageStart,
    Reasoning,
    Request,
    Response,
    StreamError,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    TranslationError,
    Usage,
)
from cliproxy_proxy.translate.gemini import SKIP_SIGNATURE, GeminiCodec, VertexCodec
from cliproxy_proxy.translate.sse import SSEParser
from tests.fakes.gemini_upstream import GEMINI_KEY, GeminiFault, start_gemini, validate_generate_content

try:
    from google import genai
    from google.genai import types as genai_types
except ImportError:  # pragma: no cover
    genai = None  # type: ignore[assignment]
    genai_types = None  # type: ignore[assignment]

needs_sdk = pytest.mark.skipif(genai is None, reason="google-genai is not installed")
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")
Server = Callable[..., Awaitable[TestServer]]

GEMINI = GeminiCodec()
VERTEX = VertexCodec()
MODEL = "gemini-2.5-flash"


def encode(request: Request, codec: GeminiCodec = GEMINI) -> dict[str, Any]:
    return orjson.loads(codec.encode_request(request))  # type: ignore[no-any-return]


def accepted(body: dict[str, Any], **options: Any) -> dict[str, Any]:
    """The body, after checking the fake (standing in for Google's API) would accept it."""
    assert validate_generate_content(body, **options) == []
    return body


def ask(*messages: Message, **options: Any) -> Request:
    return Request(MODEL, list(messages), **options)


def user(*parts: Any) -> Message:
    return Message("user", list(parts))


def assistant(*parts: Any) -> Message:
    return Message("assistant", list(parts))


def sse_chunks(data: bytes) -> list[dict[str, Any]]:
    parser = SSEParser()
    return [orjson.loads(payload) for _, payload in parser.feed(data) + parser.flush()]


# -- upstream paths -------------------------------------------------------------------------------------


def test_upstream_paths_for_gemini_and_vertex_express() -> None:
    assert GEMINI.name == "gemini" and VERTEX.name == "vertex"
    assert GEMINI.upstream_path(MODEL, False) == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert GEMINI.upstream_path(MODEL, True) == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert GEMINI.upstream_path("models/gemini-2.5-pro", False) == "/v1beta/models/gemini-2.5-pro:generateContent"
    assert VERTEX.upstream_path(MODEL, False) == "/v1/publishers/google/models/gemini-2.5-flash:generateContent"
    assert VERTEX.upstream_path(MODEL, True) == (
        "/v1/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    assert GEMINI.default_base_url == "https://generativelanguage.googleapis.com"
    assert VERTEX.default_base_url == "https://aiplatform.googleapis.com"


# -- request encoding -----------------------------------------------------------------------------------


def test_system_and_turns_merge_with_gemini_roles() -> None:
    request = ask(
        user(Text("Hello")),
        user(Text(""), Text("Are you there?")),
        assistant(Text("Yes.")),
        assistant(Text("How can I help?")),
        user(Text("Tell me a joke.")),
        system=[Text("Be brief."), Text("Be kind.")],
    )
    body = accepted(encode(request))
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Be kind."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Hello"}, {"text": "Are you there?"}]},
        {"role": "model", "parts": [{"text": "Yes."}, {"text": "How can I help?"}]},
        {"role": "user", "parts": [{"text": "Tell me a joke."}]},
    ]
    assert "model" not in body and "generationConfig" not in body and "tools" not in body


def test_images_inline_and_by_url() -> None:
    request = ask(
        user(
            Text("Compare these."),
            Image("image/png", data="iVBORw0KGgo="),
            Image("image/*", url="https://example.com/cat.jpeg"),
            Image("image/webp", url="gs://bucket/dog.webp"),
            Image("image/*", url="data:image/gif;base64,R0lGODlh"),
        )
    )
    parts = accepted(encode(request))["contents"][0]["parts"]
    assert parts[1:] == [
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpeg"}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "gs://bucket/dog.webp"}},
        {"inlineData": {"mimeType": "image/gif", "data": "R0lGODlh"}},
    ]


@pytest.mark.parametrize(
    ("url", "problem"),
    [("http://example.com/a.png", "https:// or gs://"), ("https://example.com/image?id=3", "media type")],
)
def test_images_gemini_cannot_fetch_are_refused(url: str, problem: str) -> None:
    with pytest.raises(TranslationError, match=r"messages\[0\]\.parts\[0\].*" + problem):
        GEMINI.encode_request(ask(user(Image("image/*", url=url))))


def test_tool_calls_and_results_pair_by_name() -> None:
    request = ask(
        user(Text("What is in /tmp and is it sunny?")),
        assistant(
            Text("Let me look."),
            ToolCall("call_a", "list_dir", '{"path": "/tmp"}'),
            ToolCall("call_b", "weather", '{"city": "Paris", "days": 2}'),
        ),
        user(
            ToolResult("call_a", [Text("a.txt"), Text("b.png"), Image("image/png", data="iVBORw0KGgo=")]),
            ToolResult("call_b", [Text("service down")], is_error=True),
        ),
        user(Text("Thanks; go on.")),
    )
    body = accepted(encode(request), signatures=True)
    model, answer = body["contents"][1], body["contents"][2]
    assert model == {
        "role": "model",
        "parts": [
            {"text": "Let me look."},
            {"functionCall": {"name": "list_dir", "args": {"path": "/tmp"}}, "thoughtSignature": SKIP_SIGNATURE},
            {"functionCall": {"name": "weather", "args": {"city": "Paris", "days": 2}}},
        ],
    }
    assert answer == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "list_dir", "response": {"result": "a.txt\nb.png"}}},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},  # kept, right after its response
            {"functionResponse": {"name": "weather", "response": {"error": "service down"}}},
            {"text": "Thanks; go on."},
        ],
    }


def test_tool_result_name_given_wins_and_unknown_ids_are_refused() -> None:
    named = ask(user(Text("go")), assistant(ToolCall("x", "f", "{}")), user(ToolResult("x", [Text("ok")], name="f")))
    assert encode(named)["contents"][2]["parts"][0]["functionResponse"]["name"] == "f"
    orphan = ask(user(Text("go")), assistant(ToolCall("x", "f", "")), user(ToolResult("nope", [Text("ok")])))
    with pytest.raises(TranslationError, match=r"messages\[2\]\.parts\[0\]: no earlier tool call has id 'nope'"):
        GEMINI.encode_request(orphan)


def test_tool_call_arguments_must_be_a_json_object() -> None:
    for arguments, problem in (("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object")):
        request = ask(user(Text("go")), assistant(ToolCall("x", "f", arguments)))
        with pytest.raises(TranslationError, match=r"messages\[1\]\.parts\[0\]\.arguments: " + problem):
            GEMINI.encode_request(request)


def test_thinking_from_history_goes_back_only_with_a_gemini_signature() -> None:
    request = ask(
        user(Text("Plan it.")),
        assistant(
            Thinking("unsigned musing"),  # from an OpenAI-shaped model: dropped
            Thinking("claude's thought", signature="EqQBCkYIAxgCIkB"),  # another vendor's signature: dropped
            Thinking("gemini's summary", signature="gemini:c2lnLTE="),  # kept, as a thought part
            Thinking("", signature="gemini:c2lnLTI="),  # signature-only: rides on the next part
            ToolCall("c1", "plan", '{"steps": 3}'),
        ),
        user(ToolResult("c1", [Text("done")])),
        assistant(Thinking("", signature="gemini:c2lnLTM="), Text("All done.")),
    )
    body = accepted(encode(request), signatures=True)
    assert body["contents"][1]["parts"] == [
        {"text": "gemini's summary", "thought": True, "thoughtSignature": "c2lnLTE="},
        {"functionCall": {"name": "plan", "args": {"steps": 3}}, "thoughtSignature": "c2lnLTI="},
    ]
    assert body["contents"][3]["parts"] == [{"text": "All done.", "thoughtSignature": "c2lnLTM="}]


#: A tool schema as OpenAI-shaped clients send it (pydantic's output for a strict tool, with typical extras).
OPENAI_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "additionalProperties": False,
    "$defs": {
        "Filter": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"field": {"type": "string"}, "value": {"type": ["string", "number", "null"]}},
            "required": ["field", "value"],
        }
    },
    "properties": {
        "query": {"type": "string", "description": "What to search for", "minLength": 1},
        "url": {"type": "string", "format": "uri"},
        "since": {"type": ["string", "null"], "format": "date-time", "default": None},
        "limit": {"type": "integer", "minimum": 1, "maximum": 50, "exclusiveMaximum": 51, "default": 10},
        "sort": {"enum": ["relevance", "date", None], "description": "Order"},
        "level": {"type": "integer", "enum": [1, 2, 3]},
        "kind": {"const": "web"},
        "tags": {"type": ["array", "null"], "items": {"type": "string"}, "maxItems": 5},
        "anything": {"type": "array"},
        "filters": {"type": "array", "items": {"$ref": "#/$defs/Filter"}},
        "page": {
            "allOf": [
                {"type": "object", "properties": {"size": {"type": "integer"}}, "required": ["size"]},
                {"properties": {"token": {"type": "string"}}},
            ]
        },
        "meta": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["query", "url", "since", "limit", "sort", "ghost"],
}


def test_tool_schemas_are_cut_to_what_gemini_accepts() -> None:
    request = ask(user(Text("search")), tools=[Tool("web_search", "Search the web", OPENAI_SCHEMA)])
    body = accepted(encode(request))
    declaration = body["tools"][0]["functionDeclarations"][0]
    assert declaration["name"] == "web_search" and declaration["description"] == "Search the web"
    assert declaration["parameters"] == {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What to search for", "minLength": 1},
            "url": {"type": "string"},
            "since": {"type": "string", "format": "date-time", "nullable": True},
            "limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 10},
            "sort": {"type": "string", "description": "Order", "enum": ["relevance", "date"], "nullable": True},
            "level": {"type": "integer", "description": "One of: 1, 2, 3"},
            "kind": {"type": "string", "enum": ["web"]},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5, "nullable": True},
            "anything": {"type": "array", "items": {"type": "string"}},
            "filters": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "field": {"type": "string"},
                        "value": {"anyOf": [{"type": "string"}, {"type": "number"}], "nullable": True},
                    },
                    "required": ["field", "value"],
                },
            },
            "page": {
                "type": "object",
                "properties": {"size": {"type": "integer"}, "token": {"type": "string"}},
                "required": ["size"],
            },
            "meta": {"type": "object"},
        },
        "required": ["query", "url", "since", "limit", "sort"],
    }


def test_schema_references_gemini_cannot_inline_are_refused() -> None:
    recursive = {"type": "object", "properties": {"node": {"$ref": "#/$defs/Node"}},
                 "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}}}  # fmt: skip
    remote = {"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}
    with pytest.raises(TranslationError, match=r"tools\[0\]\.parameters\.properties\.node.*recursive"):
        GEMINI.encode_request(ask(user(Text("x")), tools=[Tool("tree", None, recursive)]))
    with pytest.raises(TranslationError, match=r"tools\[0\]\.parameters\.properties\.a\.\$ref: only local"):
        GEMINI.encode_request(ask(user(Text("x")), tools=[Tool("remote", None, remote)]))


def test_tools_without_parameters_and_bad_names() -> None:
    request = ask(user(Text("time?")), tools=[Tool("now", None, {"type": "object", "properties": {}})])
    assert accepted(encode(request))["tools"] == [{"functionDeclarations": [{"name": "now"}]}]
    with pytest.raises(TranslationError, match=r"tools\[0\]\.name: Gemini function names"):
        GEMINI.encode_request(ask(user(Text("x")), tools=[Tool("1st-tool", None, {})]))


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        ("lookup", {"mode": "ANY", "allowedFunctionNames": ["lookup"]}),
    ],
)
def test_tool_choice(choice: str, config: dict[str, Any]) -> None:
    tools = [Tool("lookup", "Look up", {"type": "object", "properties": {"q": {"type": "string"}}})]
    body = accepted(encode(ask(user(Text("x")), tools=tools, tool_choice=choice)))
    assert body["toolConfig"] == {"functionCallingConfig": config}


@pytest.mark.parametrize(
    ("reasoning", "thinking"),
    [
        (Reasoning(budget=2048), {"thinkingBudget": 2048, "includeThoughts": True}),
        (Reasoning(effort="low"), {"thinkingBudget": 1024, "includeThoughts": True}),
        (Reasoning(effort="high"), {"thinkingBudget": 24576, "includeThoughts": True}),
        (Reasoning(budget=4000, effort="high"), {"thinkingBudget": 4000, "includeThoughts": True}),
        (Reasoning(effort="max"), {"thinkingBudget": 32768, "includeThoughts": True}),
        (Reasoning(budget=0), {"thinkingBudget": 0}),
        (Reasoning(effort="none"), {"thinkingBudget": 0}),
        (Reasoning(), {"thinkingBudget": -1, "includeThoughts": True}),
    ],
)
def test_thinking_budgets_and_levels(reasoning: Reasoning, thinking: dict[str, Any]) -> None:
    body = accepted(encode(ask(user(Text("think")), reasoning=reasoning)))
    assert body["generationConfig"] == {"thinkingConfig": thinking}


def test_generation_config_and_its_limits() -> None:
    request = ask(user(Text("x")), max_tokens=256, temperature=0.2, top_p=0.9, stop=["END", "STOP"])
    assert accepted(encode(request))["generationConfig"] == {
        "maxOutputTokens": 256, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END", "STOP"]
    }  # fmt: skip
    with pytest.raises(TranslationError, match="at most 5 stop sequences"):
        GEMINI.encode_request(ask(user(Text("x")), stop=list("abcdef")))
    with pytest.raises(TranslationError, match=r"reasoning\.effort: 'extreme'"):
        GEMINI.encode_request(ask(user(Text("x")), reasoning=Reasoning(effort="extreme")))


def test_vertex_encodes_the_same_body() -> None:
    request = ask(user(Text("hi")), system=[Text("sys")], reasoning=Reasoning(budget=512))
    assert VERTEX.encode_request(request) == GEMINI.encode_request(request)
    assert validate_generate_content(orjson.loads(VERTEX.encode_request(request)), vertex=True) == []


# -- response decoding and encoding ---------------------------------------------------------------------

GEMINI_RESPONSE: dict[str, Any] = {
    "candidates": [
        {
            "content": {
                "parts": [
                    {"text": "I should look it up.", "thought": True},
                    {"text": "Checking the weather."},
                    {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnLTE="},
                    {"functionCall": {"id": "fc-2", "name": "time", "args": {}}},
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}],
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 120,
        "candidatesTokenCount": 30,
        "thoughtsTokenCount": 50,
        "cachedContentTokenCount": 100,
        "totalTokenCount": 200,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 120}],
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "resp-abc",
}


def test_decode_response_parts_usage_and_ids() -> None:
    response = GEMINI.decode_response(GEMINI_RESPONSE)
    assert (response.id, response.model, response.finish) == ("resp-abc", "gemini-2.5-flash", "tool_calls")
    assert response.usage == Usage(input=120, output=80, cached=100, reasoning=50)
    assert response.usage.total == GEMINI_RESPONSE["usageMetadata"]["totalTokenCount"]
    thought, text, signature, first, second = response.parts
    assert thought == Thinking("I should look it up.")
    assert text == Text("Checking the weather.")
    assert signature == Thinking("", "gemini:c2lnLTE=")
    assert isinstance(first, ToolCall) and first.id.startswith("call_") and len(first.id) > 10
    assert (first.name, orjson.loads(first.arguments)) == ("weather", {"city": "Paris"})
    assert second == ToolCall("fc-2", "time", "{}")
    assert GEMINI.decode_response(GEMINI_RESPONSE).parts[3].id != first.id  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("reason", "calls", "finish"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        ("MAX_TOKENS", False, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("BLOCKLIST", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("SPII", False, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", False, "stop"),
    ],
)
def test_finish_reasons(reason: str, calls: bool, finish: str) -> None:
    part = {"functionCall": {"name": "f", "args": {}}} if calls else {"text": "x"}
    body = {"candidates": [{"content": {"parts": [part], "role": "model"}, "finishReason": reason}]}
    assert GEMINI.decode_response(body).finish == finish


def test_blocked_prompt_is_a_content_filter() -> None:
    body = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 7}}
    response = GEMINI.decode_response(body)
    assert (response.parts, response.finish, response.usage.input) == ([], "content_filter", 7)


def test_encode_response_round_trips() -> None:
    original = Response(
        "resp-1",
        "gemini-2.5-pro",
        [
            Thinking("Considering.", "gemini:c2lnLTE="),
            Thinking("an OpenAI model's reasoning"),
            Text("Here you go."),
            Thinking("", "gemini:c2lnLTI="),
            ToolCall("call_9", "lookup", '{"q": "x", "n": 2}'),
        ],
        "tool_calls",
        Usage(input=40, output=25, cached=8, reasoning=10),
    )
    body = orjson.loads(GEMINI.encode_response(original))
    if genai_types is not None:
        genai_types.GenerateContentResponse.model_validate_json(orjson.dumps(body))
    assert body["candidates"][0]["finishReason"] == "STOP"
    assert body["candidates"][0]["content"]["parts"][1] == {"text": "an OpenAI model's reasoning", "thought": True}
    assert body["candidates"][0]["content"]["parts"][3]["functionCall"] == {
        "id": "call_9", "name": "lookup", "args": {"q": "x", "n": 2}
    }  # fmt: skip
    assert body["usageMetadata"] == {"promptTokenCount": 40, "candidatesTokenCount": 15, "totalTokenCount": 65,
                                     "thoughtsTokenCount": 10, "cachedContentTokenCount": 8}  # fmt: skip
    back = GEMINI.decode_response(body)
    assert (back.id, back.model, back.finish, back.usage) == ("resp-1", "gemini-2.5-pro", "tool_calls", original.usage)
    assert back.parts == [*original.parts[:4], ToolCall("call_9", "lookup", '{"q":"x","n":2}')]  # compact JSON


def test_decode_response_skips_parts_it_never_asked_for() -> None:
    body = {"candidates": [{"content": {"role": "model", "parts": [
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"executableCode": {"language": "PYTHON", "code": "print(1)"}},
        {"thoughtSignature": "c2lnLTE="},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"text": "done"}]}, "finishReason": "STOP"}]}  # fmt: skip
    assert GEMINI.decode_response(body).parts == [
        Thinking("", "gemini:c2lnLTE="),
        Image("image/png", data="iVBORw0KGgo="),
        Text("done"),
    ]


@pytest.mark.parametrize(
    ("finish", "wire", "back"),
    [("stop", "STOP", "stop"), ("length", "MAX_TOKENS", "length"), ("content_filter", "SAFETY", "content_filter")],
)
def test_encode_response_finish_reasons(finish: Any, wire: str, back: str) -> None:
    body = orjson.loads(GEMINI.encode_response(Response("r", "m", [Text("x")], finish)))
    assert body["candidates"][0]["finishReason"] == wire
    assert GEMINI.decode_response(body).finish == back


@pytest.mark.parametrize(
    ("status", "google"),
    [(400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"), (403, "PERMISSION_DENIED"), (404, "NOT_FOUND"),
     (429, "RESOURCE_EXHAUSTED"), (500, "INTERNAL"), (502, "INTERNAL"), (503, "UNAVAILABLE")],
)  # fmt: skip
def test_errors_in_google_shape(status: int, google: str) -> None:
    body = orjson.loads(GEMINI.encode_error(status, "Something went wrong.", "rate_limited"))
    assert body["error"]["code"] == status and body["error"]["status"] == google
    assert body["error"]["message"] == "Something went wrong."
    assert body["error"]["details"][0]["reason"] == "rate_limited"
    assert "details" not in orjson.loads(VERTEX.encode_error(status, "x", None))["error"]


# -- streams --------------------------------------------------------------------------------------------

#: A streamGenerateContent?alt=sse exchange as Gemini sends it: usage on every chunk, complete calls, finish last.
STREAM = [
    {"candidates": [{"content": {"parts": [{"text": "Planning the lookup.", "thought": True}], "role": "model"},
                     "index": 0}],
     "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12}, "modelVersion": MODEL, "responseId": "r-1"},
    {"candidates": [{"content": {"parts": [{"text": "Let me "}], "role": "model"}, "index": 0}],
     "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12}, "modelVersion": MODEL, "responseId": "r-1"},
    {"candidates": [{"content": {"parts": [{"text": "check."}], "role": "model"}, "index": 0}],
     "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12}, "modelVersion": MODEL, "responseId": "r-1"},
    {"candidates": [{"content": {"parts": [
        {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}, "thoughtSignature": "c2lnLTE="},
        {"functionCall": {"id": "fc-7", "name": "time", "args": {"tz": "CET"}}}], "role": "model"},
        "finishReason": "STOP", "index": 0}],
     "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 9, "thoughtsTokenCount": 4,
                       "totalTokenCount": 25}, "modelVersion": MODEL, "responseId": "r-1"},
]  # fmt: skip


def _sse(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in chunks)


def decode_stream(data: bytes) -> list[Any]:
    decoder, parser = GEMINI.event_decoder(), SSEParser()
    return [e for name, payload in parser.feed(data) + parser.flush() for e in decoder.feed(name, payload)]


def test_stream_decoding_with_function_calls() -> None:
    events = decode_stream(_sse(STREAM))
    call_id = events[5].id
    assert call_id.startswith("call_")
    assert events == [
        MessageStart("r-1", MODEL),
        ThinkingDelta("Planning the lookup."),
        TextDelta("Let me "),
        TextDelta("check."),
        ThinkingDelta("", "gemini:c2lnLTE="),
        ToolCallStart(0, call_id, "weather"),
        ToolCallDelta(0, '{"city":"Oslo"}'),
        ToolCallStart(1, "fc-7", "time"),
        ToolCallDelta(1, '{"tz":"CET"}'),
        Finish("tool_calls", Usage(input=12, output=13, reasoning=4)),
    ]


def test_stream_decoding_errors_blocks_and_trailing_usage() -> None:
    decoder = GEMINI.event_decoder()
    assert decoder.feed(None, b'{"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}')\
        == [StreamError(429, "Quota exceeded")]  # fmt: skip
    blocked = GEMINI.event_decoder().feed(None, b'{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}')
    assert blocked[1:] == [Finish("content_filter", None)]
    decoder = GEMINI.event_decoder()
    decoder.feed(None, orjson.dumps({"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}]}))
    assert decoder.feed(None, b'{"usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1}}') == [
        Finish(None, Usage(input=3, output=1))
    ]


def test_stream_encoding_buffers_tool_arguments() -> None:
    encoder = GEMINI.stream_encoder(ask(user(Text("x"))))
    events: list[Event] = [
        MessageStart("r-9", "gemini-exposed"),
        ThinkingDelta("Hmm."),
        ThinkingDelta("", "gemini:c2lnLTE="),
        TextDelta("Looking."),
        ToolCallStart(0, "call_1", "weather"),
        ToolCallDelta(0, '{"ci'),
        ToolCallDelta(0, 'ty": "Ro'),
        ToolCallStart(1, "call_2", "time"),
        ToolCallDelta(0, 'me"}'),  # interleaved: still joined whole
        ToolCallDelta(1, "{}"),
        Finish("tool_calls"),
        Finish(None, Usage(input=20, output=15, reasoning=5)),
    ]
    outputs = [encoder.encode(e) for e in events]
    assert outputs[0] == b"" and all(o == b"" for o in outputs[4:10])  # nothing until arguments are complete
    data = b"".join(outputs)
    assert encoder.close() == b""
    assert data.endswith(b"\r\n\r\n")
    chunks = sse_chunks(data)
    if genai_types is not None:
        for chunk in chunks:
            genai_types.GenerateContentResponse.model_validate_json(orjson.dumps(chunk))
    parts = [c["candidates"][0].get("content", {}).get("parts") for c in chunks]
    assert parts[:3] == [
        [{"text": "Hmm.", "thought": True}],
        [{"text": "Looking.", "thoughtSignature": "c2lnLTE="}],
        [{"functionCall": {"id": "call_1", "name": "weather", "args": {"city": "Rome"}}},
         {"functionCall": {"id": "call_2", "name": "time", "args": {}}}],
    ]  # fmt: skip
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"] == {"promptTokenCount": 20, "candidatesTokenCount": 10,
                                           "totalTokenCount": 35, "thoughtsTokenCount": 5}  # fmt: skip
    assert {c["responseId"] for c in chunks} == {"r-9"} and {c["modelVersion"] for c in chunks} == {"gemini-exposed"}
    decoded = decode_stream(data)  # and Gemini's decoder reads it back
    assert decoded[-1] == Finish("tool_calls", Usage(input=20, output=15, reasoning=5))
    assert [e for e in decoded if isinstance(e, ToolCallStart)] == [
        ToolCallStart(0, "call_1", "weather"),
        ToolCallStart(1, "call_2", "time"),
    ]


def test_stream_encoder_close_sends_what_is_pending() -> None:
    encoder = GEMINI.stream_encoder(ask(user(Text("x"))))
    assert encoder.encode(ToolCallStart(0, "call_1", "f")) + encoder.encode(ToolCallDelta(0, '{"a": 1}')) == b""
    assert encoder.encode(Finish("tool_calls")) != b""  # the call goes out; the finish waits for usage
    tail = sse_chunks(encoder.close())
    assert tail == [{"candidates": [{"index": 0, "finishReason": "STOP"}], "modelVersion": MODEL, "responseId": ""}]
    pending = GEMINI.stream_encoder(ask(user(Text("x"))))
    pending.encode(ToolCallStart(0, "call_1", "f"))
    pending.encode(ToolCallDelta(0, '{"a": 1}'))
    closed = sse_chunks(pending.close())
    assert closed[0]["candidates"][0]["content"]["parts"] == [{"functionCall": {"id": "call_1", "name": "f",
                                                                                "args": {"a": 1}}}]  # fmt: skip


def test_stream_encoder_finish_waits_for_usage_or_close() -> None:
    encoder = GEMINI.stream_encoder(ask(user(Text("x"))))
    assert encoder.encode(MessageStart("r", MODEL, Usage(input=9))) == b""
    text = sse_chunks(encoder.encode(TextDelta("hi")))
    assert text[0]["candidates"][0]["content"]["parts"] == [{"text": "hi"}] and "usageMetadata" not in text[0]
    assert encoder.encode(Finish("length")) == b""  # held for the usage that may follow
    last = sse_chunks(encoder.close())
    assert last[0]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert last[0]["usageMetadata"] == {"promptTokenCount": 9, "candidatesTokenCount": 0, "totalTokenCount": 9}
    late = GEMINI.stream_encoder(ask(user(Text("x"))))
    late.encode(Finish("stop", Usage(3, 1)))
    trailing = sse_chunks(late.encode(Finish(None, Usage(3, 2))))  # a correction after the finish went out
    assert trailing[0]["candidates"] == [{"index": 0}]
    assert trailing[0]["usageMetadata"] == {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}
    assert late.close() == b""


def test_stream_encoder_errors() -> None:
    encoder = GEMINI.stream_encoder(ask(user(Text("x"))))
    encoder.encode(ToolCallStart(0, "call_1", "f"))
    encoder.encode(ToolCallDelta(0, '{"a": '))
    broken = sse_chunks(encoder.encode(Finish("tool_calls", Usage(1, 1))))
    assert broken[0]["error"]["code"] == 502 and "not valid JSON" in broken[0]["error"]["message"]
    upstream = sse_chunks(GEMINI.stream_encoder(ask(user(Text("x")))).encode(StreamError(429, "slow down")))
    assert upstream == [{"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}]


# -- request decoding (a Gemini client's body) ----------------------------------------------------------

CLIENT_BODY: dict[str, Any] = {
    "systemInstruction": {"parts": [{"text": "You are terse."}]},
    "contents": [
        {"role": "user", "parts": [{"text": "Screenshot of the page, please."}]},
        {"role": "model", "parts": [
            {"text": "Taking it.", "thought": True, "thoughtSignature": "c2lnLTA="},
            {"functionCall": {"name": "screenshot", "args": {"url": "https://example.com"}},
             "thoughtSignature": "c2lnLTE="},
            {"functionCall": {"name": "screenshot", "args": {"url": "https://example.org"}}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "screenshot", "response": {"result": "page one"}}},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
            {"functionResponse": {"name": "screenshot", "response": {"error": "timeout"}}},
            {"text": "Describe them."}]},
    ],
    "tools": [{"functionDeclarations": [{
        "name": "screenshot", "description": "Capture a page",
        "parameters": {"type": "OBJECT", "properties": {
            "url": {"type": "STRING", "description": "Page"},
            "width": {"type": "INTEGER", "nullable": True, "minimum": 100},
            "formats": {"type": "ARRAY", "items": {"type": "STRING", "enum": ["png", "jpeg"]}, "maxItems": "2"}},
            "required": ["url"], "propertyOrdering": ["url", "width", "formats"]}}]}],
    "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["screenshot"]}},
    "generationConfig": {"maxOutputTokens": 500, "temperature": 0.3, "topP": 0.8, "stopSequences": ["END"],
                         "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True}},
}  # fmt: skip


def test_decode_request_from_a_gemini_client() -> None:
    assert validate_generate_content(CLIENT_BODY) == []
    request = GEMINI.decode_request(CLIENT_BODY)
    assert request.model == "" and request.system == [Text("You are terse.")]
    assert (request.max_tokens, request.temperature, request.top_p, request.stop) == (500, 0.3, 0.8, ["END"])
    assert request.reasoning == Reasoning(budget=1024) and request.tool_choice == "screenshot"
    assert request.tools == [Tool("screenshot", "Capture a page", {
        "type": "object", "properties": {
            "url": {"type": "string", "description": "Page"},
            "width": {"type": ["integer", "null"], "minimum": 100},
            "formats": {"type": "array", "items": {"type": "string", "enum": ["png", "jpeg"]}, "maxItems": 2}},
        "required": ["url"]})]  # fmt: skip
    first, model, results = request.messages
    assert first == Message("user", [Text("Screenshot of the page, please.")])
    assert model.parts == [
        Thinking("Taking it.", "gemini:c2lnLTA="),
        Thinking("", "gemini:c2lnLTE="),
        ToolCall("call_0", "screenshot", '{"url":"https://example.com"}'),
        ToolCall("call_1", "screenshot", '{"url":"https://example.org"}'),
    ]
    assert results.parts == [  # answered in order; the image after a response is that response's output
        ToolResult("call_0", [Text("page one"), Image("image/png", data="iVBORw0KGgo=")], False, "screenshot"),
        ToolResult("call_1", [Text("timeout")], True, "screenshot"),
        Text("Describe them."),
    ]


def test_decoded_client_request_encodes_back_to_the_same_contents() -> None:
    request = GEMINI.decode_request(CLIENT_BODY)
    request.model = MODEL
    body = accepted(encode(request), signatures=True)
    assert body["contents"] == CLIENT_BODY["contents"]
    assert body["systemInstruction"] == CLIENT_BODY["systemInstruction"]
    assert body["toolConfig"] == CLIENT_BODY["toolConfig"]
    assert body["generationConfig"] == CLIENT_BODY["generationConfig"]


def test_decode_request_pairs_by_id_when_the_client_sends_ids() -> None:
    body = {"contents": [
        {"role": "user", "parts": [{"text": "go"}]},
        {"role": "model", "parts": [{"functionCall": {"id": "a", "name": "f", "args": {}}},
                                    {"functionCall": {"id": "b", "name": "f", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"id": "b", "name": "f", "response": {"n": 2}}},
                                   {"functionResponse": {"id": "a", "name": "f", "response": {"output": "one"}}}]},
    ], "generationConfig": {"thinkingConfig": {"thinkingLevel": "LOW"}}}  # fmt: skip
    request = GEMINI.decode_request(body)
    assert request.messages[2].parts == [ToolResult("b", [Text('{"n":2}')], False, "f"),
                                         ToolResult("a", [Text("one")], False, "f")]  # fmt: skip
    assert request.reasoning == Reasoning(effort="low")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"contents": []}, "contents: a non-empty list"),
        ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, r"contents\[0\]\.role"),
        ({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}}]}]},
         r"contents\[0\]\.parts\[0\]: only images"),
        ({"contents": [{"role": "user", "parts": [{"executableCode": {"code": "1"}}]}]}, "executableCode"),
        ({"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
         "no earlier functionCall named 'f'"),
        ({"contents": [{"parts": [{"text": "x"}]}], "tools": [{"googleSearch": {}}]},
         r"tools\[0\]: only functionDeclarations"),
        ({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"responseMimeType": "text/x.enum"}},
         "only text/plain or application/json"),
        ({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"candidateCount": 2}}, "one candidate"),
    ],
)  # fmt: skip
def test_decode_request_refuses_what_cannot_be_translated(body: dict[str, Any], problem: str) -> None:
    with pytest.raises(TranslationError, match=problem):
        GEMINI.decode_request(body)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"tools": [{"functionDeclarations": [{"name": "f", "parameters": {
            "type": "object", "additionalProperties": False, "properties": {"a": {"type": "string"}}}}]}]},
         'Unknown name "additionalProperties"'),
        ({"tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "object", "properties": {}}}]}]},
         "should be non-empty for OBJECT type"),
        ({"tools": [{"functionDeclarations": [{"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "array"}}}}]}]}, "items: missing field"),
        ({"tools": [{"functionDeclarations": [{"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "integer", "enum": [1]}}}}]}]}, "enum only allowed"),
        ({"tools": [{"functionDeclarations": [{"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "string", "format": "uri"}}}}]}]}, "only 'enum' and"),
        ({"generationConfig": {"thinkingConfig": {"thinking_budget": 10, "thinkingLevel": "LOW"}}},
         "one of thinking budget and thinking level"),
        ({"generationConfig": {"maxTokens": 10}}, 'Unknown name "maxTokens"'),
        ({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "@@"}}]}]},
         "valid base64"),
        ({"contents": [{"role": "user", "parts": [{"text": "a", "inlineData": {"mimeType": "image/png",
                                                                               "data": "AA=="}}]}]},
         "oneof field 'data' is already set"),
        ({"contents": [{"role": "user", "parts": [{"text": "x"}]},
                       {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
                       {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
         "missing a thought_signature"),
    ],
)  # fmt: skip
def test_the_fake_refuses_what_google_refuses(body: dict[str, Any], problem: str) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "x"}]}], **body}
    assert any(problem in error for error in validate_generate_content(body, signatures=True))


# -- over HTTP, against the fake ------------------------------------------------------------------------


async def post(url: str, body: bytes, key: str | None = GEMINI_KEY) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json", **({"x-goog-api-key": key} if key else {})}
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as response:
        return response.status, await response.read()


@pytest.mark.parametrize("codec", [GEMINI, VERTEX], ids=["gemini", "vertex"])
async def test_fake_answers_encoded_requests(aiohttp_server: Server, codec: GeminiCodec) -> None:
    state, url = await start_gemini(aiohttp_server)
    request = ask(user(Text("hello there")), system=[Text("sys")], reasoning=Reasoning(effort="low"))
    status, raw = await post(url + codec.upstream_path(MODEL, False), codec.encode_request(request))
    assert status == 200, raw
    assert state.last.vertex is (codec is VERTEX) and state.last.model == MODEL
    response = codec.decode_response(orjson.loads(raw))
    assert [p for p in response.parts if isinstance(p, Text)] == [Text("echo: hello there")]
    assert any(isinstance(p, Thinking) and p.text for p in response.parts)
    assert response.finish == "stop" and response.model == MODEL and response.id
    assert response.usage.input > 0 and response.usage.output > response.usage.reasoning > 0


async def test_fake_calls_tools_and_takes_the_results_back(aiohttp_server: Server) -> None:
    state, url = await start_gemini(aiohttp_server, require_signatures=True)
    tools = [Tool("web_search", "Search", OPENAI_SCHEMA)]
    first = ask(user(Text("find cats")), tools=tools)
    status, raw = await post(url + GEMINI.upstream_path(MODEL, False), GEMINI.encode_request(first))
    assert status == 200, raw
    answer = GEMINI.decode_response(orjson.loads(raw))
    call = next(p for p in answer.parts if isinstance(p, ToolCall))
    assert answer.finish == "tool_calls" and call.name == "web_search"
    assert orjson.loads(call.arguments)["query"] == "find cats"
    # the next turn carries the call (with Gemini's signature) and its result, named by the call's id only
    second = ask(user(Text("find cats")), assistant(*answer.parts), user(ToolResult(call.id, [Text("3 cats")])),
                 tools=tools)  # fmt: skip
    status, raw = await post(url + GEMINI.upstream_path(MODEL, False), GEMINI.encode_request(second))
    assert status == 200, raw
    sent = state.last.body["contents"]
    assert sent[1]["parts"][0]["thoughtSignature"] != SKIP_SIGNATURE  # Gemini's own signature went back
    assert sent[2]["parts"][0]["functionResponse"] == {"name": "web_search", "response": {"result": "3 cats"}}
    assert GEMINI.decode_response(orjson.loads(raw)).parts == [Text('echo: {"result":"3 cats"}')]


async def test_fake_stream_through_the_decoder(aiohttp_server: Server) -> None:
    state, url = await start_gemini(aiohttp_server, words_per_chunk=1)
    request = ask(user(Text("one two three four")), stream=True)
    status, raw = await post(url + GEMINI.upstream_path(MODEL, True), GEMINI.encode_request(request))
    assert status == 200 and state.last.stream and state.last.query == {"alt": "sse"}
    assert raw.count(b"\r\n\r\n") >= 5
    events = decode_stream(raw)
    assert isinstance(events[0], MessageStart) and events[0].model == MODEL
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "echo: one two three four"
    assert events[-1] == Finish("stop", Usage(input=events[-1].usage.input, output=5))
    assert [e for e in events if isinstance(e, Finish)] == [events[-1]]


async def test_fake_streams_a_function_call(aiohttp_server: Server) -> None:
    _, url = await start_gemini(aiohttp_server, call_ids=True)
    tools = [Tool("lookup", None, {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]})]
    request = ask(user(Text("cats")), tools=tools, tool_choice="required", stream=True)
    status, raw = await post(url + VERTEX.upstream_path(MODEL, True), VERTEX.encode_request(request))
    assert status == 200
    events = decode_stream(raw)
    start = next(e for e in events if isinstance(e, ToolCallStart))
    assert start.index == 0 and start.name == "lookup" and start.id.startswith("fc-")
    assert ToolCallDelta(0, '{"q":"cats"}') in events and events[-1].reason == "tool_calls"


async def test_fake_refuses_keys_and_bodies_like_google(aiohttp_server: Server) -> None:
    state, url = await start_gemini(aiohttp_server)
    path = url + GEMINI.upstream_path(MODEL, False)
    good = GEMINI.encode_request(ask(user(Text("hi"))))
    status, raw = await post(path, good, key=None)
    assert status == 403 and orjson.loads(raw)["error"]["status"] == "PERMISSION_DENIED"
    status, raw = await post(path, good, key="wrong")
    error = orjson.loads(raw)["error"]
    assert (status, error["status"], error["details"][0]["reason"]) == (400, "INVALID_ARGUMENT", "API_KEY_INVALID")
    bad = orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "temperature": 1})
    status, raw = await post(path, bad)
    assert status == 400 and 'Unknown name "temperature"' in orjson.loads(raw)["error"]["message"]
    unpaired = orjson.dumps({"contents": [
        {"role": "user", "parts": [{"text": "x"}]},
        {"role": "model", "parts": [{"functionCall": {"id": "1", "name": "f", "args": {}}}]},
        {"role": "user", "parts": [{"text": "y"}]}]})  # fmt: skip
    message = orjson.loads((await post(path, unpaired))[1])["error"]["message"]
    assert 'Unknown name "id"' in message and "number of function response parts" in message
    assert len(state.received) == 4


async def test_fake_scripted_errors(aiohttp_server: Server) -> None:
    state, url = await start_gemini(aiohttp_server)
    state.fail_next(GEMINI_KEY, GeminiFault(status=429), GeminiFault(error_after=1))
    path = url + GEMINI.upstream_path(MODEL, True)
    status, raw = await post(path, GEMINI.encode_request(ask(user(Text("a b c d e f")), stream=True)))
    error = orjson.loads(raw)["error"]
    assert (status, error["code"], error["status"]) == (429, 429, "RESOURCE_EXHAUSTED")
    status, raw = await post(path, GEMINI.encode_request(ask(user(Text("a b c d e f")), stream=True)))
    events = decode_stream(raw)
    assert status == 200 and isinstance(events[-1], StreamError) and events[-1].status == 500
    status, raw = await post(path, GEMINI.encode_request(ask(user(Text("ok")), stream=True)))
    assert status == 200 and isinstance(decode_stream(raw)[-1], Finish)


async def test_fake_counts_tokens(aiohttp_server: Server) -> None:
    _, url = await start_gemini(aiohttp_server)
    generate = orjson.loads(GEMINI.encode_request(ask(user(Text("count these four words")))))
    wrapped = {"generateContentRequest": {"model": f"models/{MODEL}", **generate}}
    status, raw = await post(f"{url}/v1beta/models/{MODEL}:countTokens", orjson.dumps(wrapped))
    assert status == 200 and orjson.loads(raw)["totalTokens"] > 0
    status, raw = await post(f"{url}/v1/publishers/google/models/{MODEL}:countTokens",
                             orjson.dumps({"generateContentRequest": generate}))  # fmt: skip
    assert status == 400 and "generateContentRequest" in orjson.loads(raw)["error"]["message"]


# -- the fake speaks the real wire format: Google's SDK against it --------------------------------------


def sdk_client(url: str, *, vertex: bool = False) -> Any:
    assert genai is not None and genai_types is not None
    options = genai_types.HttpOptions(base_url=url, api_version="v1" if vertex else "v1beta")
    return genai.Client(api_key=GEMINI_KEY, vertexai=vertex or None, http_options=options)


@needs_sdk
@pytest.mark.parametrize("vertex", [False, True], ids=["gemini", "vertex"])
async def test_sdk_generate_content(aiohttp_server: Server, vertex: bool) -> None:
    state, url = await start_gemini(aiohttp_server)
    client = sdk_client(url, vertex=vertex)
    try:
        config = genai_types.GenerateContentConfig(
            system_instruction="Be brief.", max_output_tokens=50, temperature=0.5,
            thinking_config=genai_types.ThinkingConfig(thinking_budget=512, include_thoughts=True),
        )  # fmt: skip
        response = await client.aio.models.generate_content(model=MODEL, contents="hello sdk", config=config)
    finally:
        await client.aio.aclose()
    assert response.text == "echo: hello sdk"
    assert response.usage_metadata.prompt_token_count > 0 and response.usage_metadata.thoughts_token_count > 0
    assert response.model_version == MODEL and response.response_id
    expected = "/v1/publishers/google/models/" if vertex else "/v1beta/models/"
    assert state.last.path == f"{expected}{MODEL}:generateContent" and state.last.key == GEMINI_KEY
    # what the SDK sent decodes, and encodes back into a body the fake accepts
    request = GEMINI.decode_request(state.last.body)
    assert request.system == [Text("Be brief.")] and request.reasoning == Reasoning(budget=512)
    assert request.messages == [Message("user", [Text("hello sdk")])]
    assert accepted(encode(request), vertex=vertex)["contents"] == state.last.body["contents"]


@needs_sdk
async def test_sdk_generate_content_stream(aiohttp_server: Server) -> None:
    state, url = await start_gemini(aiohttp_server, words_per_chunk=1)
    client = sdk_client(url)
    try:
        chunks = [c async for c in await client.aio.models.generate_content_stream(model=MODEL, contents="a b c")]
    finally:
        await client.aio.aclose()
    assert len(chunks) == 4 and "".join(c.text or "" for c in chunks) == "echo: a b c"
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert chunks[-1].usage_metadata.candidates_token_count == 4
    assert state.last.path.endswith(":streamGenerateContent") and state.last.query == {"alt": "sse"}


@needs_sdk
async def test_sdk_reads_the_codecs_responses_and_streams(aiohttp_server: Server) -> None:
    """What the codec sends Gemini clients, the SDK parses: a whole response and a stream, served as-is."""
    whole = GEMINI.encode_response(Response("r-1", MODEL, [Text("hi"), ToolCall("call_1", "f", '{"a": 1}')],
                                            "tool_calls", Usage(5, 3)))  # fmt: skip
    encoder = GEMINI.stream_encoder(ask(user(Text("x"))))
    events: list[Event] = [MessageStart("r-2", MODEL), TextDelta("hel"), TextDelta("lo"), Finish("stop", Usage(5, 2))]
    stream = b"".join(encoder.encode(e) for e in events) + encoder.close()

    async def serve(request: web.Request) -> web.Response:
        streamed = "stream" in request.match_info["call"]
        return web.Response(body=stream if streamed else whole,
                            content_type="text/event-stream" if streamed else "application/json")  # fmt: skip

    app = web.Application()
    app.router.add_post("/v1beta/models/{call}", serve)
    server = await aiohttp_server(app)
    client = sdk_client(str(server.make_url("")).rstrip("/"))
    try:
        response = await client.aio.models.generate_content(model=MODEL, contents="x")
        chunks = [c async for c in await client.aio.models.generate_content_stream(model=MODEL, contents="x")]
    finally:
        await client.aio.aclose()
    assert response.function_calls[0].name == "f" and response.function_calls[0].args == {"a": 1}
    assert response.usage_metadata.total_token_count == 8
    assert "".join(c.text or "" for c in chunks) == "hello"
    assert chunks[-1].usage_metadata.prompt_token_count == 5


@needs_sdk
async def test_sdk_sees_scripted_errors(aiohttp_server: Server) -> None:
    state, url = await start_gemini(aiohttp_server)
    state.fail_next("*", GeminiFault(status=429))
    client = sdk_client(url)
    try:
        with pytest.raises(genai.errors.ClientError) as caught:
            await client.aio.models.generate_content(model=MODEL, contents="x")
    finally:
        await client.aio.aclose()
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"


def test_json_mode_with_a_schema_decodes_to_structured_output() -> None:
    schema = {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}
    config = {"responseMimeType": "application/json", "responseSchema": schema}
    body = {"contents": [{"role": "user", "parts": [{"text": "x"}]}], "generationConfig": config}
    output = GeminiCodec().decode_request(body).output
    assert output is not None
    assert output.schema == {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
