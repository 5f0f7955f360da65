"""The Bedrock codec against botocore's own service model: what it sends is what Converse accepts, what it reads is
what Converse and ConverseStream answer (framed as the fake frames them, split anywhere)."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cliproxy_proxy.translate.bedrock import (
    BedrockCodec,
    BedrockEmbeddings,
    BedrockStreamDecoder,
    decode_converse,
    encode_converse,
    model_path,
)
from cliproxy_proxy.translate.canonical import (
    Finish,
    Image,
    Message,
    MessageStart,
    Reasoning,
    Request,
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
from cliproxy_proxy.translate.embeddings import decode_request
from cliproxy_proxy.translate.eventstream import event, exception

from ..fakes.bedrock import BedrockService, Fault, Problem, conversation_rules, stream_frames, validate

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n-fake-").decode()
WEATHER = Tool("get_weather", "Weather in a city", {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]})  # fmt: skip


def accepted(body: dict[str, object]) -> dict[str, object]:
    """The body, once the service model and Converse's conversation rules both accept it."""
    validate("ConverseRequest", body)
    conversation_rules(body)
    return body


def test_a_whole_conversation_encodes_to_what_converse_accepts() -> None:
    request = Request(
        model="anthropic.claude-3-7-sonnet-20250219-v1:0",
        system=[Text("Be brief."), Text("")],
        messages=[
            Message("assistant", [Text("Hello, how can I help?")]),  # opens with the assistant
            Message("user", [Text("What is in this picture?"), Image("image/jpg", data=PNG)]),
            Message("user", [Text("")]),  # same role again, and empty
            Message(
                "assistant",
                [
                    Thinking("unsigned: left out"),
                    Thinking("mine", "sig-1"),
                    ToolCall("call_1", "get_weather", '{"city": "Oslo"}'),
                ],
            ),
            Message("user", [ToolResult("call_1", [Text("-3 C"), Image("image/png", data=PNG)], is_error=True)]),
        ],
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=100,
        temperature=0.5,
        top_p=0.9,
        stop=["END", ""],
        reasoning=Reasoning(effort="low"),
    )
    body = accepted(encode_converse(request))
    messages = body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"] == [{"text": "(continued)"}]
    assert messages[2]["content"] == [
        {"text": "What is in this picture?"}, {"image": {"format": "jpeg", "source": {"bytes": PNG}}},
    ]  # fmt: skip
    assert messages[3]["content"] == [
        {"reasoningContent": {"reasoningText": {"text": "mine", "signature": "sig-1"}}},
        {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}},
    ]
    result = messages[4]["content"][0]["toolResult"]
    assert result["status"] == "error" and result["content"][0] == {"text": "-3 C"}
    assert body["system"] == [{"text": "Be brief."}]
    assert body["toolConfig"]["toolChoice"] == {"any": {}}
    assert body["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    # Claude must have room to answer beyond its thinking budget.
    assert body["inferenceConfig"] == {"maxTokens": 1024 + 4096, "temperature": 0.5, "topP": 0.9,
                                       "stopSequences": ["END"]}  # fmt: skip


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", {"auto": {}}), ("get_weather", {"tool": {"name": "get_weather"}}), (None, None)],
)
def test_tool_choice(choice: str | None, expected: dict[str, object] | None) -> None:
    body = accepted(encode_converse(Request("m.x", [Message("user", [Text("hi")])], tools=[WEATHER],
                                            tool_choice=choice)))  # fmt: skip
    assert body["toolConfig"].get("toolChoice") == expected


def test_tools_are_declared_when_the_history_needs_them() -> None:
    plain = encode_converse(Request("m.x", [Message("user", [Text("hi")])], tools=[WEATHER], tool_choice="none"))
    assert "toolConfig" not in accepted(plain)
    history = [Message("user", [Text("hi")]), Message("assistant", [ToolCall("t1", "get_weather", "{}")]),
               Message("user", [ToolResult("t1", [])])]  # fmt: skip
    body = accepted(encode_converse(Request("m.x", history, tools=[WEATHER], tool_choice="none")))
    assert "toolChoice" not in body["toolConfig"]
    assert body["messages"][2]["content"][0]["toolResult"]["content"] == [{"text": "(empty)"}]
    # Tool calls in the history and no tools at all (a count, a client that dropped them): the called ones.
    body = accepted(encode_converse(Request("m.x", history)))
    assert body["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}]
    }


def test_what_bedrock_cannot_take_is_the_clients_error() -> None:
    with pytest.raises(TranslationError, match="inline"):
        encode_converse(Request("m.x", [Message("user", [Image("image/png", url="https://x/a.png")])]))
    with pytest.raises(TranslationError, match="not accepted"):
        encode_converse(Request("m.x", [Message("user", [Image("image/tiff", data=PNG)])]))
    with pytest.raises(TranslationError, match="not a JSON object"):
        encode_converse(Request("m.x", [Message("user", [Text("a")]), Message("assistant", [ToolCall("t", "f", "[")])]))


def test_the_fake_refuses_what_the_service_model_does() -> None:
    """The strictness the proxy tests rely on: a wrong body is refused, naming the member."""
    good = encode_converse(Request("m.x", [Message("user", [Text("hi")])], max_tokens=5))
    for bad, where in [
        ({**good, "modelId": "m.x"}, "unknown member"),  # the id goes in the path, not the body
        ({**good, "inferenceConfig": {"maxTokens": 0}}, "inferenceConfig.maxTokens"),
        ({**good, "messages": [{"role": "robot", "content": [{"text": "x"}]}]}, "role"),
        ({**good, "messages": [{"role": "user", "content": [{"text": "x", "image": {}}]}]}, "union"),
        (
            {
                **good,
                "messages": [{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": "%%"}}}]}],
            },
            "base64",
        ),
        (
            {**good, "toolConfig": {"tools": [{"toolSpec": {"name": "bad name", "inputSchema": {"json": {}}}}]}},
            "toolSpec.name",
        ),
    ]:
        with pytest.raises(Problem, match=where):
            validate("ConverseRequest", bad)


def test_a_converse_answer_decodes() -> None:
    answer = decode_converse({
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "s"}}},
            {"text": "Calling."},
            {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Oslo"}}},
        ]}},
        "stopReason": "tool_use", "metrics": {"latencyMs": 3},
        "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 20, "cacheReadInputTokens": 4,
                  "cacheWriteInputTokens": 1},
    })  # fmt: skip
    call = ToolCall("tooluse_1", "get_weather", '{"city":"Oslo"}')
    assert answer.parts == [Thinking("hmm", "s"), Text("Calling."), call]
    assert answer.finish == "tool_calls"
    assert answer.usage == Usage(input=15, output=5, cached=4, cache_write=1)  # cache writes are priced apart


def _stream(blocks: list[dict[str, object]], stop: str, fault: Fault | None = None) -> bytes:
    usage = {"inputTokens": 7, "outputTokens": 3, "totalTokens": 10}
    return b"".join(stream_frames(BedrockService(words_per_event=1, json_chunk=3), blocks, stop, usage, fault))


def _decode(data: bytes, cuts: list[int]) -> list[object]:
    decoder, events, at = BedrockStreamDecoder(), [], 0
    for cut in sorted(cuts):
        events += decoder.feed(data[at:cut])
        at = cut
    return events + decoder.feed(data[at:]) + decoder.close()


BLOCKS = [
    {"reasoningContent": {"reasoningText": {"text": "Let me think.", "signature": "sig-9"}}},
    {"text": "Checking the weather now"},
    {"toolUse": {"toolUseId": "tooluse_x", "name": "get_weather", "input": {"city": "Oslo"}}},
]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_a_stream_decodes_the_same_however_it_is_split(cuts: list[int]) -> None:
    data = _stream(BLOCKS, "tool_use")
    events = _decode(data, [c % (len(data) + 1) for c in cuts])
    assert isinstance(events[0], MessageStart)
    assert [e for e in events if isinstance(e, ThinkingDelta)] == [ThinkingDelta("Let me think."),
                                                                   ThinkingDelta(signature="sig-9")]  # fmt: skip
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Checking the weather now"
    assert [e for e in events if isinstance(e, ToolCallStart)] == [ToolCallStart(0, "tooluse_x", "get_weather")]
    arguments = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta))
    assert orjson.loads(arguments) == {"city": "Oslo"}
    # One finish, carrying both the stop reason and the usage that came after it.
    assert [e for e in events if isinstance(e, Finish)] == [Finish("tool_calls", Usage(7, 3))]
    assert events[-1] == Finish("tool_calls", Usage(7, 3))


def test_an_in_stream_exception_is_a_stream_error_with_its_status() -> None:
    events = _decode(_stream([{"text": "a b c"}], "end_turn", Fault()), [])
    assert events[-1] == StreamError(429, "throttlingException: Too many requests, please wait before trying again.")
    assert not any(isinstance(e, Finish) for e in events)


def test_a_cut_stream_never_finishes() -> None:
    data = _stream([{"text": "a b c"}], "end_turn")
    cut_mid_frame = _decode(data[:-5], [])
    assert cut_mid_frame[-1] == StreamError(502, "Bedrock stream ended in the middle of a message")
    without_stop = b"".join([event("messageStart", b'{"role":"assistant"}'),
                             event("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":"hi"}}')])  # fmt: skip
    assert not any(isinstance(e, Finish | StreamError) for e in _decode(without_stop, []))
    stop_without_usage = without_stop + event("messageStop", b'{"stopReason":"max_tokens"}')
    assert _decode(stop_without_usage, [])[-1] == Finish("length")
    garbage = _decode(b"\x00\x00\x00\x10" + b"\xff" * 12, [])
    assert isinstance(garbage[0], StreamError) and garbage[0].status == 502
    assert _decode(exception("validationException", b'{"message":"Input is too long"}'), [])[0] == StreamError(
        400, "validationException: Input is too long"
    )


def test_the_model_id_is_one_uri_label() -> None:
    assert model_path("anthropic.claude-3-5-sonnet-20240620-v1:0", "converse") == (
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    )
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-7-sonnet-20250219-v1:0"
    assert model_path(arn, "converse-stream").count("/") == 3


def test_titan_and_cohere_embeddings() -> None:
    wire = BedrockEmbeddings()
    one = decode_request({"model": "e", "input": "hello world", "dimensions": 256})
    assert orjson.loads(wire.encode(one, "amazon.titan-embed-text-v2:0")) == {"inputText": "hello world",
                                                                             "dimensions": 256}  # fmt: skip
    answer = wire.decode(b'{"embedding": [0.5, -0.25], "inputTextTokenCount": 3}', one, "titan")
    assert (answer.tokens, answer.estimated) == (3, False)
    assert orjson.loads(answer.body)["data"] == [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]}]
    many = decode_request({"model": "e", "input": ["abcd", "efghijkl"], "encoding_format": "base64"})
    with pytest.raises(TranslationError, match="one text"):
        wire.encode(many, "amazon.titan-embed-text-v2:0")
    assert orjson.loads(wire.encode(many, "cohere.embed-english-v3")) == {
        "texts": ["abcd", "efghijkl"], "input_type": "search_document"}  # fmt: skip
    floats = b'{"embeddings": [[1.0], [2.0]], "response_type": "embeddings_floats"}'
    answer = wire.decode(floats, many, "an-alias")
    assert (answer.tokens, answer.estimated) == (3, True)
    assert orjson.loads(answer.body)["data"][1]["embedding"] == base64.b64encode(b"\x00\x00\x00\x40").decode()
    with pytest.raises(ValueError, match="number of embeddings"):
        wire.decode(b'{"embeddings": [[1.0]]}', many, "an-alias")
    with pytest.raises(TranslationError, match="token arrays"):
        wire.encode(decode_request({"model": "e", "input": [1, 2, 3]}), "cohere.embed-english-v3")


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, b'{"message":"Input is too long for requested model."}', "context_window"),
        (400, b'{"message":"prompt is too long: 210000 tokens > 200000 maximum"}', "context_window"),
        (400, b'{"message":"The model returned the following errors: messages: text field is blank"}', "fatal"),
        (429, b'{"message":"Too many requests, please wait before trying again."}', "quota"),
        (403, b'{"message":"The security token included in the request is expired"}', "auth"),
        (424, b'{"message":"Model returned an error"}', "retryable"),
        (503, b'{"message":"Service unavailable"}', "retryable"),
    ],
)
def test_what_bedrocks_errors_mean_for_routing(status: int, body: bytes, kind: str) -> None:
    assert BedrockCodec().classify_error(status, body) == kind
