"""Anthropic Messages codec: exact shapes both ways, checked against the official SDK's types and a strict fake."""

from __future__ import annotations

from typing import Any

import aiohttp
import anthropic
import orjson
import pydantic
import pytest
from aiohttp import web
from anthropic.types import Message as SDKMessage
from anthropic.types import RawMessageStreamEvent, ThinkingBlock, ToolUseBlock
from anthropic.types.shared import ErrorResponse

from cliproxy_proxy.translate.anthropic import REDACTED, AnthropicCodec
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
from cliproxy_proxy.translate.sse import SSEParser

from ..fakes.anthropic_upstream import DEFAULT_KEY, Fault, sign, start_anthropic, validate_request

CODEC = AnthropicCodec()
MODEL = "claude-sonnet-4-6"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
STREAM_EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)


def encoded(request: Request) -> dict[str, Any]:
    """The upstream body for ``request``, which the real API's rules (as the fake knows them) must accept."""
    body: dict[str, Any] = orjson.loads(CODEC.encode_request(request))
    assert validate_request(body) is None, validate_request(body)
    return body


def sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Parsed SSE; every event but ``error`` must be one the SDK's stream-event type accepts."""
    parser = SSEParser()
    events = [(name or "", orjson.loads(data)) for name, data in parser.feed(raw) + parser.flush()]
    for name, data in events:
        assert data["type"] == name
        if name != "error":
            STREAM_EVENT.validate_python(data)
    return events


def encode_stream(events: list[Event], model: str = MODEL) -> list[tuple[str, dict[str, Any]]]:
    encoder = CODEC.stream_encoder(Request(model=model, messages=[]))
    return sse(b"".join(encoder.encode(e) for e in events) + encoder.close())


def shape(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[Any, ...]]:
    """Event names with the block index and block or delta type, the grammar Anthropic clients rely on."""
    out: list[tuple[Any, ...]] = []
    for name, data in events:
        if name == "content_block_start":
            out.append((name, data["index"], data["content_block"]["type"]))
        elif name == "content_block_delta":
            out.append((name, data["index"], data["delta"]["type"]))
        elif name == "content_block_stop":
            out.append((name, data["index"]))
        else:
            out.append((name,))
    return out


# -- decode_request -------------------------------------------------------------------------------------


def test_decode_request_maps_every_field() -> None:
    body = {
        "model": MODEL, "max_tokens": 2048, "temperature": 0.2, "top_p": 0.9, "stream": True,
        "stop_sequences": ["END", "STOP"], "metadata": {"user_id": "u1"},
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": "be kind"}],
        "thinking": {"type": "enabled", "budget_tokens": 1500},
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA},
                  {"name": "clock", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "weather twice", "signature": "sig-1"},
                {"type": "redacted_thinking", "data": "opaque=="},
                {"type": "text", "text": "checking"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True, "content": [
                    {"type": "text", "text": "radar down"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                ]},
                {"type": "text", "text": "and now?"},
            ]},
        ],
    }  # fmt: skip
    assert CODEC.decode_request(body) == Request(
        model=MODEL,
        system=[Text("be brief"), Text("be kind")],
        messages=[
            Message("user", [Text("look"), Image("image/png", data=PNG),
                             Image("image/jpeg", url="https://example.com/cat.jpg")]),
            Message("assistant", [
                Thinking("weather twice", "sig-1"), Thinking("", REDACTED + "opaque=="), Text("checking"),
                ToolCall("toolu_1", "get_weather", '{"city":"Paris"}'),
                ToolCall("toolu_2", "get_weather", '{"city":"Oslo"}'),
            ]),
            Message("user", [
                ToolResult("toolu_1", [Text("sunny")]),
                ToolResult("toolu_2", [Text("radar down"), Image("image/png", data=PNG)], is_error=True),
                Text("and now?"),
            ]),
        ],
        tools=[Tool("get_weather", "Weather", WEATHER_SCHEMA),
               Tool("clock", None, {"type": "object", "properties": {}})],
        tool_choice="required", parallel_tool_calls=False, max_tokens=2048, temperature=0.2, top_p=0.9,
        stop=["END", "STOP"], stream=True, reasoning=Reasoning(budget=1500), stream_usage=True,
    )  # fmt: skip


def test_decode_request_with_a_string_system_and_string_contents() -> None:
    request = CODEC.decode_request({
        "model": MODEL, "max_tokens": 10, "system": "you are terse",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                     {"role": "user", "content": "bye"}],
    })  # fmt: skip
    assert request.system == [Text("you are terse")]
    assert request.messages == [Message("user", [Text("hi")]), Message("assistant", [Text("hello")]),
                                Message("user", [Text("bye")])]  # fmt: skip
    assert (request.stream, request.tool_choice, request.reasoning, request.stop) == (False, None, None, [])


def test_mid_conversation_system_turns_join_the_system_prompt() -> None:
    request = CODEC.decode_request({
        "model": MODEL, "max_tokens": 10, "system": "first",
        "messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "second"},
                     {"role": "user", "content": "b"}],
    })  # fmt: skip
    assert request.system == [Text("first"), Text("second")]
    assert [m.role for m in request.messages] == ["user", "user"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, ("auto", None)),
        ({"type": "any"}, ("required", None)),
        ({"type": "none"}, ("none", None)),
        ({"type": "tool", "name": "get_weather"}, ("get_weather", None)),
        ({"type": "auto", "disable_parallel_tool_use": True}, ("auto", False)),
        ({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": False}, ("get_weather", True)),
    ],
)
def test_decode_tool_choice(choice: dict[str, Any], expected: tuple[Any, Any]) -> None:
    tools = [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}]
    request = CODEC.decode_request({"model": MODEL, "max_tokens": 10, "tools": tools, "tool_choice": choice,
                                    "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert (request.tool_choice, request.parallel_tool_calls) == expected


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 4000}}, Reasoning(budget=4000)),
        ({"thinking": {"type": "disabled"}}, Reasoning(budget=0)),
        ({"thinking": {"type": "adaptive"}}, Reasoning(effort="high")),
        ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}, Reasoning(effort="low")),
        ({"output_config": {"effort": "medium"}}, Reasoning(effort="medium")),
        ({}, None),
    ],
)
def test_decode_thinking(extra: dict[str, Any], expected: Reasoning | None) -> None:
    body = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}], **extra}
    assert CODEC.decode_request(body).reasoning == expected


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tools": [{"type": "Web Search!", "name": "web_search"}]}, "tools[0]: needs an input_schema"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
         "messages[0].content[0]: content of type 'document'"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
         "messages[0].content[0].source: image source 'file'"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}]},
         "messages[0].content[0]: tool_use blocks belong in assistant messages"),
        ({"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]},
         "messages[0].content[0]: tool_result blocks belong in user messages"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                      "content": [{"type": "document", "source": {}}]}]}]},
         "messages[0].content[0].content[0]: tool result content 'document'"),
        ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": []}, "messages: a non-empty list"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice: must be"),
    ],
)  # fmt: skip
def test_decode_refuses_what_cannot_be_translated(extra: dict[str, Any], message: str) -> None:
    body = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}], **extra}
    with pytest.raises(TranslationError) as caught:
        CODEC.decode_request(body)
    assert message in str(caught.value)


# -- encode_request -------------------------------------------------------------------------------------


def test_encode_request_exact_shape() -> None:
    request = Request(
        model=MODEL,
        system=[Text("be brief"), Text("be kind")],
        messages=[
            Message("user", [Text("what is the weather?"), Image("image/png", data=PNG),
                             Image("image/*", url="https://example.com/map.png")]),
            Message("assistant", [Thinking("call twice", "sig-a"), Text("checking"),
                                  ToolCall("toolu_1", "get_weather", '{"city": "Paris"}'),
                                  ToolCall("toolu_2", "get_weather", '{"city":"Oslo"}')]),
            Message("user", [ToolResult("toolu_1", [Text("sunny")]),
                             ToolResult("toolu_2", [Text("no data")], is_error=True)]),
        ],
        tools=[Tool("get_weather", "Weather for a city", WEATHER_SCHEMA)],
        tool_choice="auto", parallel_tool_calls=False, max_tokens=1000, top_p=0.8, stop=["END"], stream=True,
    )  # fmt: skip
    body: dict[str, Any] = orjson.loads(CODEC.encode_request(request))
    assert body == {
        "model": MODEL, "max_tokens": 1000,
        "system": [{"type": "text", "text": "be brief"}, {"type": "text", "text": "be kind"}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "what is the weather?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/map.png"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "call twice", "signature": "sig-a"},
                {"type": "text", "text": "checking"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "no data"}],
                 "is_error": True},
            ]},
        ],
        "tools": [{"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER_SCHEMA}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "top_p": 0.8, "stop_sequences": ["END"], "stream": True,
    }  # fmt: skip
    # the fake checks signatures it issued; with its own signature the same body is a valid request
    request.messages[1].parts[0] = Thinking("call twice", sign("call twice"))
    encoded(request)


def test_encode_merges_turns_and_puts_tool_results_first() -> None:
    request = Request(model=MODEL, messages=[
        Message("user", [Text("first")]),
        Message("user", [Text("second")]),
        Message("assistant", [ToolCall("toolu_a", "get_weather", '{"city":"A"}'),
                              ToolCall("toolu_b", "get_weather", '{"city":"B"}'),
                              ToolCall("toolu_c", "get_weather", '{"city":"C"}')]),
        Message("assistant", [Thinking("from another vendor")]),  # unsigned: dropped, leaving an empty turn
        Message("user", [Text("here are the results"), ToolResult("toolu_a", [Text("1")])]),
        Message("user", [ToolResult("toolu_b", [Text("2")]), ToolResult("toolu_c", [Text("3")]), Text("thanks")]),
    ], tools=[Tool("get_weather", None, WEATHER_SCHEMA)])  # fmt: skip
    body = encoded(request)
    messages = body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"] == [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    assert [b["id"] for b in messages[1]["content"]] == ["toolu_a", "toolu_b", "toolu_c"]
    assert [(b["type"], b.get("tool_use_id") or b.get("text")) for b in messages[2]["content"]] == [
        ("tool_result", "toolu_a"), ("tool_result", "toolu_b"), ("tool_result", "toolu_c"),
        ("text", "here are the results"), ("text", "thanks"),
    ]  # fmt: skip
    assert "description" not in body["tools"][0]


def test_encode_keeps_images_inside_tool_results() -> None:
    request = Request(model=MODEL, messages=[
        Message("user", [Text("screenshot please")]),
        Message("assistant", [ToolCall("toolu_s", "screenshot", "")]),
        Message("user", [ToolResult("toolu_s", [Text("here"), Image("image/jpg", data=PNG), Text("")])]),
    ], tools=[Tool("screenshot", "Takes one", {"properties": {}})])  # fmt: skip
    body = encoded(request)
    assert body["messages"][1]["content"][0]["input"] == {}
    assert body["messages"][2]["content"] == [{
        "type": "tool_result", "tool_use_id": "toolu_s",
        "content": [{"type": "text", "text": "here"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}}],
    }]  # fmt: skip
    assert body["tools"][0]["input_schema"] == {"type": "object", "properties": {}}


def test_encode_replays_signed_and_redacted_thinking_but_drops_unsigned() -> None:
    request = Request(model=MODEL, messages=[
        Message("user", [Text("q")]),
        Message("assistant", [Thinking("mine", sign("mine")), Thinking("theirs"), Thinking("", REDACTED + "abc="),
                              Text("answer")]),
        Message("user", [Text("more")]),
    ])  # fmt: skip
    assert encoded(request)["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "mine", "signature": sign("mine")},
        {"type": "redacted_thinking", "data": "abc="},
        {"type": "text", "text": "answer"},
    ]


@pytest.mark.parametrize(
    ("reasoning", "max_tokens", "thinking", "sent_max"),
    [
        (Reasoning(budget=2000), 8000, {"type": "enabled", "budget_tokens": 2000}, 8000),
        (Reasoning(budget=2000), 1000, {"type": "enabled", "budget_tokens": 2000}, 6096),
        (Reasoning(budget=100), None, {"type": "enabled", "budget_tokens": 1024}, 4096),
        (Reasoning(effort="high"), None, {"type": "enabled", "budget_tokens": 24576}, 28672),
        (Reasoning(effort="minimal"), 3000, {"type": "enabled", "budget_tokens": 1024}, 3000),
        (Reasoning(budget=0, effort="high"), 500, None, 500),
        (Reasoning(effort="none"), None, None, 4096),
        (None, None, None, 4096),
    ],
)
def test_encode_thinking_budget_and_max_tokens(
    reasoning: Reasoning | None, max_tokens: int | None, thinking: dict[str, Any] | None, sent_max: int
) -> None:
    body = encoded(Request(model=MODEL, messages=[Message("user", [Text("x")])], reasoning=reasoning,
                           max_tokens=max_tokens, temperature=0.5))  # fmt: skip
    assert body.get("thinking") == thinking
    assert body["max_tokens"] == sent_max
    assert body.get("temperature") == (None if thinking else 0.5)  # thinking refuses a temperature


def test_encode_unknown_effort_is_refused() -> None:
    with pytest.raises(TranslationError, match=r"reasoning\.effort"):
        CODEC.encode_request(Request(model=MODEL, messages=[Message("user", [Text("x")])],
                                     reasoning=Reasoning(effort="ludicrous")))  # fmt: skip


@pytest.mark.parametrize(
    ("temperature", "top_p", "reasoning", "expected"),
    [
        (0.3, None, None, {"temperature": 0.3}),
        (None, 0.7, None, {"top_p": 0.7}),
        (0.3, 0.7, None, {"temperature": 0.3}),
        (0.3, 0.97, Reasoning(budget=2000), {"top_p": 0.97}),
        (None, 0.5, Reasoning(budget=2000), {}),
    ],
)
def test_encode_sampling(
    temperature: float | None, top_p: float | None, reasoning: Reasoning | None, expected: dict[str, float]
) -> None:
    body = encoded(Request(model=MODEL, messages=[Message("user", [Text("x")])], temperature=temperature,
                           top_p=top_p, reasoning=reasoning))  # fmt: skip
    assert {k: body[k] for k in ("temperature", "top_p") if k in body} == expected


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", False, {"type": "none"}),
        ("get_weather", None, {"type": "tool", "name": "get_weather"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, True, None),
    ],
)
def test_encode_tool_choice(choice: str | None, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    body = encoded(Request(model=MODEL, messages=[Message("user", [Text("x")])], tool_choice=choice,
                           parallel_tool_calls=parallel, tools=[Tool("get_weather", "w", WEATHER_SCHEMA)]))  # fmt: skip
    assert body.get("tool_choice") == expected


def test_encode_tool_choice_needs_tools_and_a_forced_call_turns_thinking_off() -> None:
    bare = encoded(Request(model=MODEL, messages=[Message("user", [Text("x")])], tool_choice="required"))
    assert "tool_choice" not in bare and "tools" not in bare
    tools = [Tool("get_weather", "w", WEATHER_SCHEMA)]
    forced = encoded(Request(model=MODEL, messages=[Message("user", [Text("x")])], tool_choice="required",
                             tools=tools, reasoning=Reasoning(budget=5000)))  # fmt: skip
    assert forced["tool_choice"] == {"type": "any"} and "thinking" not in forced


def test_encode_turns_thinking_off_mid_tool_loop_without_claudes_signed_thinking() -> None:
    def loop(thinking: Thinking) -> Request:
        return Request(model=MODEL, reasoning=Reasoning(budget=2000), tools=[Tool("get_weather", "w", WEATHER_SCHEMA)],
                       messages=[Message("user", [Text("weather?")]),
                                 Message("assistant", [thinking, ToolCall("call_1", "get_weather", '{"city":"Rome"}')]),
                                 Message("user", [ToolResult("call_1", [Text("hot")])])])  # fmt: skip

    foreign = encoded(loop(Thinking("gpt reasoning")))  # unsigned: dropped, so Claude would refuse thinking
    assert "thinking" not in foreign and foreign["messages"][1]["content"][0]["type"] == "tool_use"
    with_thinking = {**foreign, "thinking": {"type": "enabled", "budget_tokens": 2000}}
    assert "Expected `thinking` or `redacted_thinking`, but found `tool_use`" in str(validate_request(with_thinking))
    own = encoded(loop(Thinking("mine", sign("mine"))))
    assert own["thinking"] == {"type": "enabled", "budget_tokens": 2000}


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (Message("assistant", [ToolCall("toolu_1", "f", '{"city": ')]), "messages[0].parts[0].arguments"),
        (Message("assistant", [ToolCall("toolu_1", "f", "[1, 2]")]), "are not a JSON object"),
        (Message("user", [Image("image/bmp", data="AAAA")]), "messages[0].parts[0]: image type 'image/bmp'"),
        (Message("assistant", [Thinking("unsigned")]), "messages: nothing left"),
    ],
)
def test_encode_refuses_what_anthropic_cannot_take(message: Message, error: str) -> None:
    with pytest.raises(TranslationError) as caught:
        CODEC.encode_request(Request(model=MODEL, messages=[message]))
    assert error in str(caught.value)


def test_anthropic_request_survives_decode_then_encode() -> None:
    body = {
        "model": MODEL, "max_tokens": 3000, "system": "terse",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "two cities", "signature": sign("two cities")},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "days": 2}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True, "content": [
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/radar.gif"}}]},
                {"type": "text", "text": "summarise"},
            ]},
        ],
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "stop_sequences": ["###"], "stream": True,
    }  # fmt: skip
    assert validate_request(body) is None
    assert encoded(CODEC.decode_request(body)) == body


def test_upstream_path() -> None:
    assert CODEC.upstream_path(MODEL, stream=False) == CODEC.upstream_path(MODEL, stream=True) == "/v1/messages"


# -- responses ------------------------------------------------------------------------------------------


def test_encode_response_is_a_valid_anthropic_message() -> None:
    response = Response(
        "chatcmpl-42", MODEL,
        [Thinking("hmm", "sig"), Thinking("", REDACTED + "xyz"), Text("Let me check."),
         ToolCall("call_1", "get_weather", '{"city":"Paris"}'), ToolCall("call_2", "get_weather", "")],
        "tool_calls", Usage(input=120, output=30, cached=100, reasoning=12),
    )  # fmt: skip
    raw = orjson.loads(CODEC.encode_response(response))
    message = SDKMessage.model_validate(raw)
    assert message.id == "msg_chatcmpl-42" and message.model == MODEL and message.role == "assistant"
    assert [b.type for b in message.content] == ["thinking", "redacted_thinking", "text", "tool_use", "tool_use"]
    assert raw["content"][0] == {"type": "thinking", "thinking": "hmm", "signature": "sig"}
    assert raw["content"][1] == {"type": "redacted_thinking", "data": "xyz"}
    assert raw["content"][3] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
    assert raw["content"][4]["input"] == {}
    assert (message.stop_reason, message.stop_sequence) == ("tool_use", None)
    assert raw["usage"] == {
        "input_tokens": 20, "output_tokens": 30, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100,
        "output_tokens_details": {"thinking_tokens": 12},
    }  # fmt: skip


def test_encode_response_keeps_unparseable_arguments_visible() -> None:
    response = Response("msg_1", MODEL, [ToolCall("call_1", "f", '{"city": "Par')], "length")
    raw = orjson.loads(CODEC.encode_response(response))
    SDKMessage.model_validate(raw)
    assert raw["id"] == "msg_1" and raw["stop_reason"] == "max_tokens"
    assert raw["content"][0]["input"] == {"_raw_arguments": '{"city": "Par'}


@pytest.mark.parametrize(
    ("finish", "stop_sequence", "reason", "sequence"),
    [
        ("stop", None, "end_turn", None),
        ("stop", "###", "stop_sequence", "###"),
        ("length", None, "max_tokens", None),
        ("tool_calls", None, "tool_use", None),
        ("content_filter", None, "refusal", None),
    ],
)
def test_stop_reasons_out(finish: Any, stop_sequence: str | None, reason: str, sequence: str | None) -> None:
    raw = orjson.loads(CODEC.encode_response(Response("", MODEL, [Text("x")], finish, stop_sequence=stop_sequence)))
    assert raw["id"].startswith("msg_") and len(raw["id"]) > 4
    assert (raw["stop_reason"], raw["stop_sequence"]) == (reason, sequence)


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"), ("max_tokens", "length"),
     ("model_context_window_exceeded", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter")],
)  # fmt: skip
def test_stop_reasons_in(reason: str, finish: str) -> None:
    body: dict[str, Any] = {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL, "content": [],
            "stop_reason": reason, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}  # fmt: skip
    assert CODEC.decode_response(body).finish == finish


def test_decode_response_reads_blocks_in_order_and_counts_cached_input() -> None:
    body = {
        "id": "msg_01", "type": "message", "role": "assistant", "model": MODEL,
        "content": [
            {"type": "thinking", "thinking": "plan", "signature": "EqQB"},
            {"type": "redacted_thinking", "data": "secret"},
            {"type": "text", "text": "Two calls:", "citations": None},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "stop_sequence", "stop_sequence": "###",
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 200, "cache_creation_input_tokens": 5,
                  "output_tokens": 50, "output_tokens_details": {"thinking_tokens": 20}},
    }  # fmt: skip
    SDKMessage.model_validate(body)
    assert CODEC.decode_response(body) == Response(
        "msg_01", MODEL,
        [Thinking("plan", "EqQB"), Thinking("", REDACTED + "secret"), Text("Two calls:"),
         ToolCall("toolu_1", "get_weather", '{"city":"Paris"}'), ToolCall("toolu_2", "get_weather", '{"city":"Oslo"}')],
        "stop", Usage(input=215, output=50, cached=200, reasoning=20, cache_write=5), "###",
    )  # fmt: skip


def test_response_survives_encode_then_decode() -> None:
    response = Response("msg_7", MODEL, [Thinking("t", "s"), Text("a"), ToolCall("toolu_9", "f", '{"x":[1,2]}')],
                        "tool_calls", Usage(input=50, output=9, cached=40, reasoning=3))  # fmt: skip
    assert CODEC.decode_response(orjson.loads(CODEC.encode_response(response))) == response


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
     (404, "not_found_error"), (413, "request_too_large"), (429, "rate_limit_error"), (500, "api_error"),
     (502, "api_error"), (529, "overloaded_error"), (422, "invalid_request_error")],
)  # fmt: skip
def test_encode_error(status: int, kind: str) -> None:
    body = orjson.loads(CODEC.encode_error(status, "went wrong", "some_code"))
    assert body == {"type": "error", "error": {"type": kind, "message": "went wrong"}}
    if kind != "request_too_large":  # a real type the SDK's error union does not list
        assert ErrorResponse.model_validate(body).error.type == kind


# -- stream encoder -------------------------------------------------------------------------------------


def test_stream_encoder_follows_anthropics_event_grammar() -> None:
    events = encode_stream([
        MessageStart("chatcmpl-1", "alias-the-client-asked-for", Usage(input=0)),
        ThinkingDelta("let me "), ThinkingDelta("think"), ThinkingDelta(signature="sig-x"),
        TextDelta("Checking "), TextDelta("both."),
        ToolCallStart(0, "call_a", "get_weather"),
        ToolCallDelta(0, '{"ci'), ToolCallDelta(0, 'ty": "Pa'), ToolCallDelta(0, 'ris"}'),
        ToolCallStart(1, "call_b", "get_weather"),
        ToolCallDelta(1, '{"city":'), ToolCallDelta(1, ' "Oslo"}'),
        Finish("tool_calls"),
        Finish(None, Usage(input=30, output=12, cached=10)),  # OpenAI upstreams send usage after the finish
    ])  # fmt: skip
    assert shape(events) == [
        ("message_start",),
        ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"), ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0),
        ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta"),
        ("content_block_delta", 1, "text_delta"), ("content_block_stop", 1),
        ("content_block_start", 2, "tool_use"), *[("content_block_delta", 2, "input_json_delta")] * 3,
        ("content_block_stop", 2),
        ("content_block_start", 3, "tool_use"), *[("content_block_delta", 3, "input_json_delta")] * 2,
        ("content_block_stop", 3),
        ("message_delta",), ("message_stop",),
    ]  # fmt: skip
    start = events[0][1]["message"]  # the relay puts the model id the client asked for on MessageStart
    assert (start["id"], start["model"], start["content"]) == ("msg_chatcmpl-1", "alias-the-client-asked-for", [])
    assert events[10][1]["content_block"] == {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}
    by_block: dict[int, str] = {}
    for name, data in events:
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta":
            by_block[data["index"]] = by_block.get(data["index"], "") + data["delta"]["partial_json"]
    assert by_block == {2: '{"city": "Paris"}', 3: '{"city": "Oslo"}'}
    assert events[-2][1] == {
        "type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"input_tokens": 20, "output_tokens": 12, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 10},
    }  # fmt: skip


def test_stream_encoder_waits_for_usage_before_ending_the_message() -> None:
    encoder = CODEC.stream_encoder(Request(model=MODEL, messages=[]))
    head = sse(encoder.encode(MessageStart("m1", MODEL)) + encoder.encode(TextDelta("hi")))
    assert shape(head)[-1] == ("content_block_delta", 0, "text_delta")
    finished = sse(encoder.encode(Finish("stop")))
    assert shape(finished) == [("content_block_stop", 0)]  # no message_delta: usage may still come
    usage = sse(encoder.encode(Finish(None, Usage(input=5, output=2))))
    assert shape(usage) == [("message_delta",), ("message_stop",)]
    assert usage[0][1]["usage"]["output_tokens"] == 2 and usage[0][1]["delta"]["stop_reason"] == "end_turn"
    assert encoder.close() == b""


def test_stream_encoder_ends_at_once_when_reason_and_usage_come_together() -> None:
    encoder = CODEC.stream_encoder(Request(model=MODEL, messages=[]))
    raw = encoder.encode(MessageStart("msg_9", MODEL, Usage(input=7))) + encoder.encode(TextDelta("stop here"))
    tail = sse(encoder.encode(Finish("stop", Usage(input=7, output=3), stop_sequence="###")))
    assert shape(tail) == [("content_block_stop", 0), ("message_delta",), ("message_stop",)]
    assert tail[1][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "###"}
    assert sse(raw)[0][1]["message"]["usage"]["input_tokens"] == 7
    assert encoder.close() == b""


def test_stream_encoder_always_starts_with_message_start() -> None:
    """cliproxyapi++ once sent a tool's content_block_start before message_start; Claude clients choke on it."""
    events = encode_stream([ToolCallStart(0, "call_1", "get_weather"), ToolCallDelta(0, '{"city":"Rome"}'),
                            Finish("tool_calls")])  # fmt: skip
    assert shape(events) == [
        ("message_start",), ("content_block_start", 0, "tool_use"), ("content_block_delta", 0, "input_json_delta"),
        ("content_block_stop", 0), ("message_delta",), ("message_stop",),
    ]  # fmt: skip
    assert events[0][1]["message"]["id"].startswith("msg_") and events[0][1]["message"]["model"] == MODEL
    late = encode_stream([TextDelta("a"), MessageStart("ignored", "x")])
    assert [name for name, _ in late].count("message_start") == 1


def test_stream_encoder_handles_tool_arguments_without_a_start_and_interleaved_calls() -> None:
    events = encode_stream([
        ToolCallStart(0, "call_0", "a"), ToolCallStart(1, "call_1", "b"), ToolCallDelta(0, '{"late":1}'),
        ToolCallDelta(2, '{"x":2}'), Finish("tool_calls", Usage(output=4)),
    ])  # fmt: skip
    deltas = [(d["index"], d["delta"]["partial_json"]) for n, d in events if n == "content_block_delta"]
    assert deltas == [(0, '{"late":1}'), (2, '{"x":2}')]  # nothing lost; each piece names its call's block
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [s["name"] for s in starts] == ["a", "b", ""] and starts[2]["id"].startswith("toolu_")


def test_stream_encoder_turns_errors_into_anthropic_error_events() -> None:
    encoder = CODEC.stream_encoder(Request(model=MODEL, messages=[]))
    events = sse(encoder.encode(TextDelta("partial")) + encoder.encode(StreamError(529, "Overloaded")))
    assert shape(events)[-1] == ("error",)
    assert events[-1][1] == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert encoder.close() == b"" and encoder.encode(TextDelta("after")) == b""
    only = CODEC.stream_encoder(Request(model=MODEL, messages=[]))
    assert sse(only.encode(StreamError(502, "upstream broke"))) == [
        ("error", {"type": "error", "error": {"type": "api_error", "message": "upstream broke"}})
    ]


def test_stream_encoder_close_completes_an_empty_or_cut_stream() -> None:
    assert shape(encode_stream([])) == [("message_start",), ("message_delta",), ("message_stop",)]
    cut = encode_stream([MessageStart("m", MODEL), TextDelta("half")])
    assert shape(cut)[-3:] == [("content_block_stop", 0), ("message_delta",), ("message_stop",)]
    assert cut[-2][1]["delta"]["stop_reason"] == "end_turn"


def test_stream_encoder_passes_redacted_thinking_as_its_own_block() -> None:
    events = encode_stream([ThinkingDelta("", REDACTED + "blob"), TextDelta("ok"), Finish("stop", Usage(output=1))])
    assert shape(events)[1:4] == [("content_block_start", 0, "redacted_thinking"), ("content_block_stop", 0),
                                  ("content_block_start", 1, "text")]  # fmt: skip
    assert events[1][1]["content_block"] == {"type": "redacted_thinking", "data": "blob"}


async def test_the_anthropic_sdk_assembles_the_encoded_stream(aiohttp_server: Any) -> None:
    encoder = CODEC.stream_encoder(Request(model=MODEL, messages=[]))
    events: list[Event] = [
        MessageStart("abc", MODEL, Usage(input=40, cached=30)), ThinkingDelta("hmm"), ThinkingDelta(signature="sig"),
        TextDelta("Weather "), TextDelta("coming."), ToolCallStart(0, "call_1", "get_weather"),
        ToolCallDelta(0, '{"city"'), ToolCallDelta(0, ':"Paris"}'),
        Finish("tool_calls", Usage(input=40, output=17, cached=30)),
    ]  # fmt: skip
    raw = b"".join(encoder.encode(e) for e in events) + encoder.close()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=raw, content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/v1/messages", serve)
    server = await aiohttp_server(app)
    client = anthropic.AsyncAnthropic(base_url=str(server.make_url("")).rstrip("/"), api_key="k", max_retries=0)
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "x"}]) as s:
        text = "".join([t async for t in s.text_stream])
        final = await s.get_final_message()
    assert text == "Weather coming."
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    thought, call = final.content[0], final.content[2]
    assert isinstance(thought, ThinkingBlock) and (thought.thinking, thought.signature) == ("hmm", "sig")
    assert isinstance(call, ToolUseBlock) and call.input == {"city": "Paris"}
    assert (final.id, final.stop_reason) == ("msg_abc", "tool_use")
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (10, 30, 17)


# -- stream decoder -------------------------------------------------------------------------------------

ANTHROPIC_STREAM: list[tuple[str, dict[str, Any]]] = [
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_01", "type": "message", "role": "assistant", "model": MODEL, "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 25, "cache_read_input_tokens": 100, "output_tokens": 1}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "thinking_delta", "thinking": "two cities"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1,
                             "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "text_delta", "text": "Checking"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "text_delta", "text": " both."}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {
        "type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2,
                             "delta": {"type": "input_json_delta", "partial_json": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2,
                             "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2,
                             "delta": {"type": "input_json_delta", "partial_json": 'ris"}'}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 2}),
    ("content_block_start", {"type": "content_block_start", "index": 3, "content_block": {
        "type": "tool_use", "id": "toolu_B", "name": "get_weather", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 3,
                             "delta": {"type": "input_json_delta", "partial_json": '{"city": "Oslo"}'}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 3}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                       "usage": {"output_tokens": 89}}),
    ("message_stop", {"type": "message_stop"}),
]  # fmt: skip


def test_stream_decoder_reads_a_real_anthropic_stream() -> None:
    decoder = CODEC.event_decoder()
    events = [e for name, data in ANTHROPIC_STREAM for e in decoder.feed(name, orjson.dumps(data))]
    assert events == [
        MessageStart("msg_01", MODEL, Usage(input=125, cached=100)),
        ThinkingDelta("two cities"), ThinkingDelta(signature="EqQBCgIYAhIM"),
        TextDelta("Checking"), TextDelta(" both."),
        ToolCallStart(0, "toolu_A", "get_weather"), ToolCallDelta(0, '{"city": "Pa'), ToolCallDelta(0, 'ris"}'),
        ToolCallStart(1, "toolu_B", "get_weather"), ToolCallDelta(1, '{"city": "Oslo"}'),
        Finish("tool_calls", Usage(input=125, output=89, cached=100)),
    ]  # fmt: skip


def test_stream_decoder_takes_cumulative_input_from_message_delta_and_stop_sequences() -> None:
    decoder = CODEC.event_decoder()
    decoder.feed("message_start", orjson.dumps(ANTHROPIC_STREAM[0][1]))
    delta = {"type": "message_delta", "delta": {"stop_reason": "stop_sequence", "stop_sequence": "###"},
             "usage": {"input_tokens": 30, "cache_read_input_tokens": 0, "output_tokens": 4}}  # fmt: skip
    assert decoder.feed(None, orjson.dumps(delta)) == [Finish("stop", Usage(input=30, output=4), "###")]
    partial = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
               "usage": {"input_tokens": 40, "cache_read_input_tokens": None, "output_tokens": 6}}  # fmt: skip
    again = CODEC.event_decoder()
    again.feed("message_start", orjson.dumps(ANTHROPIC_STREAM[0][1]))
    assert again.feed("message_delta", orjson.dumps(partial)) == [
        Finish("stop", Usage(input=140, output=6, cached=100))
    ]


@pytest.mark.parametrize(("kind", "status"), [("overloaded_error", 529), ("api_error", 502)])
def test_stream_decoder_turns_error_events_into_stream_errors(kind: str, status: int) -> None:
    data = orjson.dumps({"type": "error", "error": {"type": kind, "message": "Overloaded"}})
    assert CODEC.event_decoder().feed("error", data) == [StreamError(status, "Overloaded")]


def test_stream_decoder_then_encoder_reproduces_the_stream() -> None:
    decoder = CODEC.event_decoder()
    encoder = CODEC.stream_encoder(Request(model=MODEL, messages=[]))
    raw = b"".join(encoder.encode(e) for n, d in ANTHROPIC_STREAM for e in decoder.feed(n, orjson.dumps(d)))
    out = sse(raw + encoder.close())
    original = [(n, d) for n, d in ANTHROPIC_STREAM
                if n != "ping" and d.get("delta", {}).get("partial_json") != ""]  # fmt: skip
    assert shape(out) == shape(original)
    assert [d.get("delta") for _, d in out] == [d.get("delta") for _, d in original]
    assert out[-2][1]["usage"] == {"input_tokens": 25, "output_tokens": 89, "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 100}  # fmt: skip


# -- the fake upstream, driven by the real SDK ----------------------------------------------------------


def sdk(url: str, key: str = DEFAULT_KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0)


async def test_fake_answers_the_sdk_messages_create(aiohttp_server: Any) -> None:
    state, url = await start_anthropic(aiohttp_server)
    message = await sdk(url).messages.create(
        model=MODEL, max_tokens=100, system="be brief", messages=[{"role": "user", "content": "hello there"}]
    )
    assert message.content[0].type == "text" and message.content[0].text == "echo: hello there"
    assert (message.stop_reason, message.model, message.usage.output_tokens > 0) == ("end_turn", MODEL, True)
    assert state.received[-1].problem is None and state.received[-1].body["system"] == "be brief"
    assert state.received[-1].headers["anthropic-version"]

    tools: Any = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}]
    history: Any = [{"role": "user", "content": "Paris"}]
    called = await sdk(url).messages.create(model=MODEL, max_tokens=100, tools=tools, messages=history)
    call = called.content[-1]
    assert called.stop_reason == "tool_use" and call.type == "tool_use" and call.input == {"city": "Paris"}
    history += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in called.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]},
    ]
    answered = await sdk(url).messages.create(model=MODEL, max_tokens=100, tools=tools, messages=history)
    assert answered.content[0].type == "text" and answered.content[0].text == "echo: sunny"
    assert state.invalid == []


async def test_fake_thinks_with_signatures_it_later_verifies(aiohttp_server: Any) -> None:
    state, url = await start_anthropic(aiohttp_server)
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    first = await sdk(url).messages.create(model=MODEL, max_tokens=2000, thinking=thinking,
                                           messages=[{"role": "user", "content": "think about it"}])  # fmt: skip
    block = first.content[0]
    assert block.type == "thinking" and block.signature == sign(block.thinking)
    replay: Any = {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]}
    await sdk(url).messages.create(model=MODEL, max_tokens=2000, thinking=thinking,
                                   messages=[{"role": "user", "content": "think about it"}, replay,
                                             {"role": "user", "content": "again"}])  # fmt: skip
    forged: Any = {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "forged"}]}
    with pytest.raises(anthropic.BadRequestError) as caught:
        await sdk(url).messages.create(model=MODEL, max_tokens=2000, thinking=thinking,
                                       messages=[{"role": "user", "content": "q"}, forged,
                                                 {"role": "user", "content": "again"}])  # fmt: skip
    assert "Invalid `signature`" in caught.value.message
    assert [r.problem for r in state.invalid] == ["messages.1.content.0: Invalid `signature` in `thinking` block"]


async def test_fake_streams_the_real_event_sequence_to_the_sdk(aiohttp_server: Any) -> None:
    state, url = await start_anthropic(aiohttp_server, json_chunk=4)
    async with sdk(url).messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "stream these words"}]
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert kinds.count("text") == 4 and kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert final.content[0].type == "text" and final.content[0].text == "echo: stream these words"

    tools: Any = [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}]
    async with sdk(url).messages.stream(model=MODEL, max_tokens=100, tools=tools,
                                        messages=[{"role": "user", "content": "Lisbon"}]) as stream:  # fmt: skip
        pieces = [e.partial_json async for e in stream if e.type == "input_json"]
        final = await stream.get_final_message()
    assert len(pieces) > 3 and "".join(pieces) == '{"city":"Lisbon"}'
    assert final.content[-1].type == "tool_use" and final.content[-1].input == {"city": "Lisbon"}
    assert final.stop_reason == "tool_use" and state.bodies[-1]["stream"] is True


async def test_fake_scripted_errors_reach_the_sdk(aiohttp_server: Any) -> None:
    state, url = await start_anthropic(aiohttp_server)
    messages: Any = [{"role": "user", "content": "x"}]
    state.fail_next(Fault(429, "slow down", headers={"retry-after": "7"}), Fault(529, "Overloaded"))
    with pytest.raises(anthropic.RateLimitError) as limited:
        await sdk(url).messages.create(model=MODEL, max_tokens=10, messages=messages)
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.body == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    with pytest.raises(anthropic.OverloadedError):
        await sdk(url).messages.create(model=MODEL, max_tokens=10, messages=messages)
    state.fail_next(Fault(stream_error="overloaded_error"))
    with pytest.raises(anthropic.APIStatusError) as mid_stream:
        async with sdk(url).messages.stream(model=MODEL, max_tokens=10, messages=messages) as stream:
            await stream.get_final_message()
    error: Any = mid_stream.value.body
    assert error["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.AuthenticationError):
        await sdk(url, key="wrong").messages.create(model=MODEL, max_tokens=10, messages=messages)
    with pytest.raises(anthropic.NotFoundError):
        await sdk(url).messages.create(model="claude-nope", max_tokens=10, messages=messages)


async def test_fake_refuses_invalid_bodies_and_a_missing_version(aiohttp_server: Any) -> None:
    state, url = await start_anthropic(aiohttp_server)
    with pytest.raises(anthropic.BadRequestError) as caught:
        await sdk(url).messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}],
                                       extra_body={"frequency_penalty": 1})  # fmt: skip
    assert "frequency_penalty: Extra inputs are not permitted" in caught.value.message
    async with aiohttp.ClientSession() as session:
        body = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
        async with session.post(f"{url}/v1/messages", json=body, headers={"x-api-key": DEFAULT_KEY}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["message"] == "anthropic-version: header is required"
    assert [r.problem for r in state.invalid] == [
        "frequency_penalty: Extra inputs are not permitted",
        "anthropic-version: header is required",
    ]
    assert state.received[-1].key == DEFAULT_KEY  # the proxy's x-api-key header is accepted like the SDK's bearer


# -- the codec against the fake: what the proxy will send and read --------------------------------------


async def post(url: str, payload: bytes) -> aiohttp.ClientResponse:
    session = aiohttp.ClientSession()
    headers = {"x-api-key": DEFAULT_KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    try:
        response = await session.post(f"{url}{CODEC.upstream_path(MODEL, False)}", data=payload, headers=headers)
        await response.read()
        return response
    finally:
        await session.close()


async def test_codec_conversation_with_the_fake(aiohttp_server: Any) -> None:
    state, url = await start_anthropic(aiohttp_server, parallel_calls=2, cached_tokens=3)
    tools = [Tool("get_weather", "Weather", WEATHER_SCHEMA), Tool("get_time", "Time", WEATHER_SCHEMA)]
    conversation = [Message("user", [Text("think: weather and time in Paris?"), Image("image/png", data=PNG)])]
    request = Request(model=MODEL, messages=conversation, tools=tools, reasoning=Reasoning(effort="low"),
                      system=[Text("be brief")], max_tokens=500)  # fmt: skip
    first = await post(url, CODEC.encode_request(request))
    assert first.status == 200, await first.text()
    answer = CODEC.decode_response(await first.json())
    assert answer.finish == "tool_calls" and answer.usage.cached == 3
    assert [type(p).__name__ for p in answer.parts] == ["Thinking", "Text", "ToolCall", "ToolCall"]
    calls = [p for p in answer.parts if isinstance(p, ToolCall)]
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert orjson.loads(calls[0].arguments) == {"city": "think: weather and time in Paris?"}

    # the answer goes back as history, signed thinking included, with results (one holding an image)
    conversation += [
        Message("assistant", answer.parts),
        Message(
            "user",
            [
                ToolResult(calls[1].id, [Text("noon")]),
                ToolResult(calls[0].id, [Text("sunny"), Image("image/png", data=PNG)]),
            ],
        ),
    ]
    second = await post(url, CODEC.encode_request(request))
    assert second.status == 200, await second.text()
    final = CODEC.decode_response(await second.json())
    assert final.parts == [Text("echo: noon sunny")] and final.finish == "stop"
    assert state.invalid == [] and state.bodies[-1]["thinking"] == {"type": "enabled", "budget_tokens": 1024}


async def test_codec_reads_the_fakes_stream(aiohttp_server: Any) -> None:
    state, url = await start_anthropic(aiohttp_server, json_chunk=5)
    request = Request(model=MODEL, messages=[Message("user", [Text("Madrid")])], stream=True,
                      tools=[Tool("get_weather", None, WEATHER_SCHEMA)], tool_choice="get_weather")  # fmt: skip
    response = await post(url, CODEC.encode_request(request))
    assert response.status == 200 and response.content_type == "text/event-stream"
    parser, decoder = SSEParser(), CODEC.event_decoder()
    events = [e for name, data in parser.feed(await response.read()) for e in decoder.feed(name, data)]
    assert isinstance(events[0], MessageStart) and events[0].model == MODEL
    assert isinstance(events[1], ToolCallStart) and (events[1].index, events[1].name) == (0, "get_weather")
    assert "".join(e.arguments for e in events if isinstance(e, ToolCallDelta)) == '{"city":"Madrid"}'
    assert sum(isinstance(e, ToolCallDelta) for e in events) > 2
    finish = events[-1]
    assert isinstance(finish, Finish) and finish.reason == "tool_calls" and finish.usage and finish.usage.output > 0
    assert state.bodies[-1]["tool_choice"] == {"type": "tool", "name": "get_weather"}
