"""The OpenAI chat codec and the thinking suffix: canonical round trips checked against the SDK's own types."""

from __future__ import annotations

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming
from pydantic import TypeAdapter

from cliproxy_proxy.translate.canonical import (
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
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    TranslationError,
    Usage,
)
from cliproxy_proxy.translate.openai_chat import OpenAIChatCodec
from cliproxy_proxy.translate.sse import SSEParser
from cliproxy_proxy.translate.thinking import split_thinking_suffix

CODEC = OpenAIChatCodec()
REQUEST_TYPE = TypeAdapter(CompletionCreateParamsStreaming)


def test_decode_request_covers_roles_tools_and_images() -> None:
    body = {
        "model": "m", "stream": True, "stream_options": {"include_usage": True}, "max_completion_tokens": 99,
        "stop": "END", "reasoning_effort": "low", "tool_choice": {"type": "function", "function": {"name": "f"}},
        "tools": [{"type": "function",
                   "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
                {"id": "c2", "type": "function", "function": {"name": "f", "arguments": '{"a":2}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "one"},
            {"role": "tool", "tool_call_id": "c2", "content": "two"},
        ],
    }  # fmt: skip
    request = CODEC.decode_request(body)
    assert request.system == [Text("be brief")]
    assert request.messages[0].parts == [Text("look"), Image("image/png", data="AAAA")]
    assert [p.id for p in request.messages[1].parts if isinstance(p, ToolCall)] == ["c1", "c2"]
    assert request.messages[2].parts == [ToolResult("c1", [Text("one")]), ToolResult("c2", [Text("two")])]
    assert (request.max_tokens, request.stop, request.tool_choice, request.stream_usage) == (99, ["END"], "f", True)
    assert request.reasoning == Reasoning(effort="low")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n: only one choice"),
        ({"messages": []}, "messages: a non-empty list"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"messages": [{"role": "oracle", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_untranslatable_requests_name_the_field(body: dict[str, object], message: str) -> None:
    with pytest.raises(TranslationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        CODEC.decode_request({"model": "m", **body})


def test_encoded_request_is_valid_for_the_sdk_and_keeps_tool_images() -> None:
    request = Request(
        model="gpt-x", stream=True, system=[Text("sys")], max_tokens=50, reasoning=Reasoning(budget=20000),
        tools=[Tool("lookup", None, {"type": "object", "properties": {"q": {"type": "string"}}})],
        tool_choice="required",
        messages=[
            Message("user", [Text("hi")]),
            Message("assistant", [Thinking("hmm", "sig"), Text("calling"), ToolCall("c1", "lookup", '{"q":"x"}')]),
            Message("user", [ToolResult("c1", [Text("found"), Image("image/png", data="AAAA")], is_error=False)]),
        ],
    )  # fmt: skip
    body = orjson.loads(CODEC.encode_request(request))
    REQUEST_TYPE.validate_python(body)
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": "found"}
    assert body["messages"][4]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,AAAA"},
    }
    assert body["reasoning_effort"] == "high" and body["tool_choice"] == "required"
    assert body["stream_options"] == {"include_usage": True}


def test_response_round_trip_parses_with_the_sdk() -> None:
    response = Response("r1", "alias", [Thinking("why"), Text("hello"), ToolCall("c1", "f", '{"a":1}')],
                        "tool_calls", Usage(10, 5, cached=2, reasoning=1))  # fmt: skip
    encoded = ChatCompletion.model_validate_json(CODEC.encode_response(response))
    assert encoded.choices[0].message.content == "hello"
    assert encoded.choices[0].finish_reason == "tool_calls"
    assert encoded.usage is not None and encoded.usage.total_tokens == 15
    decoded = CODEC.decode_response(orjson.loads(CODEC.encode_response(response)))
    assert decoded.parts == response.parts and decoded.finish == "tool_calls" and decoded.usage == response.usage


def test_stream_encoder_emits_sdk_chunks_and_usage_only_when_asked() -> None:
    events = [
        MessageStart("abc", "alias"), TextDelta("he"), TextDelta("llo"), ToolCallStart(0, "c1", "f"),
        ToolCallDelta(0, '{"a"'), ToolCallDelta(0, ":1}"), Finish("tool_calls"), Finish(None, Usage(3, 4)),
    ]  # fmt: skip
    for wants_usage in (True, False):
        encoder = CODEC.stream_encoder(Request(model="alias", messages=[], stream_usage=wants_usage))
        raw = b"".join(encoder.encode(e) for e in events) + encoder.close()
        parsed = SSEParser().feed(raw)
        assert parsed[-1] == (None, b"[DONE]")
        chunks = [ChatCompletionChunk.model_validate_json(data) for _, data in parsed[:-1]]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        arguments = "".join(
            (c.choices[0].delta.tool_calls or [])[0].function.arguments or ""  # type: ignore[union-attr]
            for c in chunks if c.choices and c.choices[0].delta.tool_calls
        )  # fmt: skip
        assert (text, arguments) == ("hello", '{"a":1}')
        assert (chunks[-1].usage is not None) is wants_usage


def test_stream_decoder_reads_openai_chunks_in_order() -> None:
    decoder = CODEC.event_decoder()
    chunks = [
        {"id": "x", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"id": "x", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}},
            {"index": 1, "id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}}]},
        {"id": "x", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": '{"a":1}'}}]}, "finish_reason": "tool_calls"}]},
        {"id": "x", "model": "m", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 6}},
    ]  # fmt: skip
    events = [e for c in chunks for e in decoder.feed(None, orjson.dumps(c))] + decoder.feed(None, b"[DONE]")
    assert events == [
        MessageStart("x", "m"), ToolCallStart(0, "c1", "f"), ToolCallStart(1, "c2", "g"), ToolCallDelta(1, "{}"),
        ToolCallDelta(0, '{"a":1}'), Finish("tool_calls"), Finish(None, Usage(5, 6)),
    ]  # fmt: skip
    assert decoder.feed(None, b'{"error": {"message": "boom"}}') == [StreamError(502, "boom")]


@pytest.mark.parametrize(
    ("model", "base", "reasoning"),
    [
        ("claude(8192)", "claude", Reasoning(budget=8192)),
        ("prod/claude(high)", "prod/claude", Reasoning(budget=24576, effort="high")),
        ("gemini(none)", "gemini", Reasoning(budget=0, effort="none")),
        ("gemini(max)", "gemini", Reasoning(budget=128000, effort="max")),
        ("odd(name)", "odd(name)", None),
        ("plain", "plain", None),
    ],
)
def test_thinking_suffix(model: str, base: str, reasoning: Reasoning | None) -> None:
    assert split_thinking_suffix(model) == (base, reasoning)


def test_sse_parser_handles_split_crlf_and_comments() -> None:
    parser = SSEParser()
    assert parser.feed(b': keep-alive\r\n\r\nevent: a\r\ndata: {"x"') == []
    assert parser.feed(b":1}\r\n\r\ndata: line1\ndata: line2\n\n") == [("a", b'{"x":1}'), (None, b"line1\nline2")]
    assert parser.feed(b"data: tail") == [] and parser.flush() == [(None, b"tail")]
