"""The Responses codec, held to the real ``openai`` SDK: its request types, its ``Response`` model, its stream
events and its stream helpers, and a fake Responses API that refuses what the live one would."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import orjson
import pydantic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai.types.responses import Response as SDKResponse
from openai.types.responses import ResponseStreamEvent

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
from cliproxy_proxy.translate.responses import ResponsesCodec
from cliproxy_proxy.translate.sse import SSEParser
from tests.fakes.responses_upstream import Fault, Refused, start_responses, validate_request

Server = Callable[..., Awaitable[TestServer]]

CODEC = ResponsesCodec()
STREAM_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
KEY = "sk-fake-1"
PNG = "iVBORw0KGgo="
SIGNED = "gAAAAABencrypted-reasoning-token"  # the shape of OpenAI's encrypted reasoning (a Fernet token)
WEATHER = Tool("get_weather", "Weather for a city", {"type": "object", "properties": {"city": {"type": "string"}}})
TIME = Tool("get_time", None, {"type": "object", "properties": {"zone": {"type": "string"}}})


def upstream_body(request: Request) -> dict[str, Any]:
    """What the codec sends a provider, after the fake's check against the SDK's ``ResponseCreateParams``."""
    body: dict[str, Any] = orjson.loads(CODEC.encode_request(request))
    try:
        validate_request(body)
    except Refused as refused:  # pragma: no cover - the assertion message is the point
        pytest.fail(f"not a valid ResponseCreateParams body: {refused.message}")
    return body


def sse_events(raw: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    parser = SSEParser()
    return [(name, orjson.loads(data)) for name, data in parser.feed(raw) + parser.flush()]


def encode_stream(events: list[Event], request: Request | None = None) -> bytes:
    encoder = CODEC.stream_encoder(request or Request(model="gpt-proxy", messages=[], stream=True))
    return b"".join(encoder.encode(e) for e in events) + encoder.close()


async def serve_sse(aiohttp_server: Server, payload: bytes) -> tuple[str, list[dict[str, Any]]]:
    """A tiny Responses endpoint that answers any request with ``payload`` and records the bodies it got."""
    bodies: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.Response(body=payload, content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/v1/responses", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("/v1")), bodies


def client(base_url: str, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)


#: A Responses client's second turn: instructions, images, reasoning, two parallel calls and their outputs.
CLIENT_BODY: dict[str, Any] = {
    "model": "gpt-5-codex",
    "instructions": "Be brief.",
    "input": [
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": [
            {"type": "input_text", "text": "Weather and time in Paris?"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "auto"},
            {"type": "input_image", "image_url": "https://example.com/paris.jpg", "detail": "auto"},
        ]},
        {"type": "reasoning", "id": "rs_1", "summary": [
            {"type": "summary_text", "text": "Two lookups."}, {"type": "summary_text", "text": "In parallel."},
        ], "encrypted_content": SIGNED},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking both."}]},
        {"type": "function_call", "call_id": "call_w", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "call_t", "name": "get_time", "arguments": '{"zone":"CET"}'},
        {"type": "function_call_output", "call_id": "call_w", "output": "Sunny, 21C"},
        {"type": "function_call_output", "call_id": "call_t", "output": [
            {"type": "input_text", "text": "14:05"},
            {"type": "input_image", "image_url": f"data:image/jpeg;base64,{PNG}", "detail": "low"},
        ]},
        {"role": "user", "content": "Thanks, and tomorrow?"},
    ],
    "tools": [
        {"type": "function", "name": "get_weather", "description": "Weather for a city", "strict": True,
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {
            "zone": {"type": "string"}}}, "strict": False},
    ],
    "tool_choice": {"type": "function", "name": "get_weather"},
    "max_output_tokens": 500,
    "temperature": 0.2,
    "top_p": 0.9,
    "parallel_tool_calls": True,
    "reasoning": {"effort": "high"},
    "stream": True,
    "store": False,
}  # fmt: skip


# -- decoding a Responses client's request --------------------------------------------------------------


def test_decode_request_items_become_canonical_turns() -> None:
    request = CODEC.decode_request(CLIENT_BODY)
    assert request.model == "gpt-5-codex"
    assert request.system == [Text("Be brief."), Text("Answer in English.")]
    assert request.messages == [
        Message("user", [Text("Weather and time in Paris?"), Image("image/png", data=PNG),
                         Image("image/*", url="https://example.com/paris.jpg")]),
        Message("assistant", [  # reasoning, text and both calls: one assistant turn, in the client's order
            Thinking("Two lookups.\n\nIn parallel.", SIGNED), Text("Checking both."),
            ToolCall("call_w", "get_weather", '{"city":"Paris"}'), ToolCall("call_t", "get_time", '{"zone":"CET"}'),
        ]),
        Message("user", [
            ToolResult("call_w", [Text("Sunny, 21C")]),
            ToolResult("call_t", [Text("14:05"), Image("image/jpeg", data=PNG)]),
        ]),
        Message("user", [Text("Thanks, and tomorrow?")]),
    ]  # fmt: skip
    assert request.tools == [WEATHER, TIME]
    assert request.tool_choice == "get_weather"
    assert (request.max_tokens, request.temperature, request.top_p) == (500, 0.2, 0.9)
    assert request.reasoning == Reasoning(effort="high")
    assert request.stream is True and request.parallel_tool_calls is True and request.stream_usage is True


def test_decode_request_with_plain_string_input() -> None:
    request = CODEC.decode_request({"model": "m", "input": "hello", "instructions": "sys", "tool_choice": "none"})
    assert request.messages == [Message("user", [Text("hello")])]
    assert request.system == [Text("sys")]
    assert (request.tool_choice, request.reasoning, request.stream, request.max_tokens) == ("none", None, False, None)


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id: "),
        ({"conversation": "conv_1"}, "conversation: "),
        ({"background": True}, "background: "),
        ({"tools": [{"type": "namespace", "name": "ns", "tools": [{"type": "web_search"}]}]}, "tools[0].tools[0]: "),
        ({"tools": [{"name": "untyped"}]}, "tools[0]: a tool needs a type"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format: "),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]: "),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0]: "),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, "input[0].content[0]"),
        ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0]: "),
        ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}, "tool_choice: "),
    ],
)
def test_decode_request_refuses_what_cannot_cross(extra: dict[str, Any], where: str) -> None:
    with pytest.raises(TranslationError) as caught:
        CODEC.decode_request({"model": "m", "input": "hi", **extra})
    assert str(caught.value).startswith(where)


def test_stateful_requests_say_so() -> None:
    with pytest.raises(TranslationError, match="is stateful"):
        CODEC.decode_request({"model": "m", "input": "hi", "previous_response_id": "resp_abc", "store": True})


# -- encoding for a Responses provider ------------------------------------------------------------------


def test_encode_request_items_in_order_and_valid_for_the_sdk() -> None:
    request = Request(
        model="gpt-5-codex",
        system=[Text("Be brief."), Text("Use tools.")],
        messages=[
            Message("user", [Text("Look:"), Image("image/png", data=PNG), Image("image/*", url="https://x.test/a.png")]),
            Message("assistant", [
                Thinking("unsigned thoughts"), Thinking("anthropic thoughts", "EqQBCkgIARAB"),
                Thinking("mine", SIGNED), Text("Let me "), Text("check."),
                ToolCall("call_1", "get_weather", '{"city":"Oslo"}'), ToolCall("call_2", "get_time", "{}"),
            ]),
            Message("user", [
                ToolResult("call_1", [Text("Rain"), Image("image/png", data=PNG)]),
                ToolResult("call_2", [Text("boom")], is_error=True),
                Text("And now?"),
            ]),
        ],
        tools=[WEATHER, TIME], tool_choice="get_time", max_tokens=4, temperature=0.5, top_p=0.8,
        parallel_tool_calls=False, reasoning=Reasoning(budget=4096), stream=True,
    )  # fmt: skip
    body = upstream_body(request)
    assert body["instructions"] == "Be brief.\n\nUse tools."
    assert body["input"] == [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Look:"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "auto"},
            {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "auto"},
        ]},
        # unsigned and foreign-signed thinking cannot be replayed to OpenAI; its own encrypted reasoning can
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "mine"}], "encrypted_content": SIGNED},
        {"type": "message", "role": "assistant", "content": "Let me check."},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": [
            {"type": "input_text", "text": "Rain"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "auto"},
        ]},
        {"type": "function_call_output", "call_id": "call_2", "output": "Error: boom"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And now?"}]},
    ]  # fmt: skip
    assert body["tools"][0] == {"type": "function", "name": "get_weather", "description": "Weather for a city",
                                "parameters": WEATHER.parameters, "strict": False}  # fmt: skip
    assert body["tool_choice"] == {"type": "function", "name": "get_time"}
    assert body["max_output_tokens"] == 16  # the API's minimum
    assert (body["temperature"], body["top_p"], body["parallel_tool_calls"]) == (0.5, 0.8, False)
    assert body["reasoning"] == {"effort": "medium"}
    assert body["include"] == ["reasoning.encrypted_content"] and body["store"] is False and body["stream"] is True


@pytest.mark.parametrize(
    ("model", "reasoning", "effort", "encrypted"),
    [
        ("gpt-4o", None, None, False),
        ("gpt-5-chat-latest", None, None, False),
        ("gpt-5-codex", None, None, True),  # reasons by default, so its reasoning must come back encrypted
        ("o3", Reasoning(budget=0), None, True),
        ("gpt-5", Reasoning(budget=512), "low", True),
        ("gpt-5", Reasoning(budget=1024), "low", True),
        ("gpt-5", Reasoning(budget=8192), "medium", True),
        ("gpt-5", Reasoning(budget=8193), "high", True),
        ("gpt-5", Reasoning(effort="none"), None, True),
        ("gpt-5", Reasoning(budget=32768, effort="xhigh"), "xhigh", True),
        ("custom-model", Reasoning(effort="minimal"), "minimal", True),
    ],
)
def test_encode_request_reasoning(model: str, reasoning: Reasoning | None, effort: str | None, encrypted: bool) -> None:
    body = upstream_body(Request(model=model, messages=[Message("user", [Text("hi")])], reasoning=reasoning))
    assert body.get("reasoning") == ({"effort": effort} if effort else None)
    assert ("include" in body) is encrypted
    assert body["store"] is False and "stream" not in body


def test_encode_request_refuses_what_the_api_lacks() -> None:
    with pytest.raises(TranslationError, match=r"^stop: "):
        CODEC.encode_request(Request(model="m", messages=[Message("user", [Text("hi")])], stop=["END"]))
    with pytest.raises(TranslationError, match=r"^reasoning\.effort: "):
        CODEC.encode_request(Request(model="m", messages=[], reasoning=Reasoning(effort="turbo")))
    with pytest.raises(TranslationError, match=r"^messages\[0\]: "):
        CODEC.encode_request(Request(model="m", messages=[Message("assistant", [Image("image/png", data=PNG)])]))


def test_request_round_trip_keeps_every_turn() -> None:
    first = CODEC.decode_request(CLIENT_BODY)
    body = upstream_body(first)
    assert [item["type"] for item in body["input"]] == [
        "message", "reasoning", "message", "function_call", "function_call", "function_call_output",
        "function_call_output", "message",
    ]  # fmt: skip
    again = CODEC.decode_request(body)
    assert again.messages == first.messages
    assert (again.tools, again.tool_choice, again.reasoning, again.max_tokens) == (
        first.tools, first.tool_choice, first.reasoning, first.max_tokens,
    )  # fmt: skip
    assert again.system == [Text("Be brief.\n\nAnswer in English.")]  # one instructions string upstream


# -- whole responses ------------------------------------------------------------------------------------


def test_encode_response_is_an_sdk_response() -> None:
    usage = Usage(input=30, output=12, cached=8, reasoning=5)
    response = Response(
        id="chatcmpl-42", model="gpt-proxy", finish="tool_calls", usage=usage,
        parts=[Thinking("plan", SIGNED), Text("Checking "), Text("both."),
               ToolCall("call_a", "get_weather", '{"city":"Rome"}'), ToolCall("call_b", "get_time", "{}")],
    )  # fmt: skip
    parsed = SDKResponse.model_validate(orjson.loads(CODEC.encode_response(response)))
    assert parsed.id == "resp_chatcmpl-42" and parsed.object == "response" and parsed.status == "completed"
    assert [item.type for item in parsed.output] == ["reasoning", "message", "function_call", "function_call"]
    reasoning, message, first, second = parsed.output
    assert reasoning.type == "reasoning" and reasoning.encrypted_content == SIGNED
    assert [s.text for s in reasoning.summary] == ["plan"]
    assert message.type == "message" and message.id.startswith("msg_") and parsed.output_text == "Checking both."
    assert first.type == "function_call" and (first.call_id, first.name, first.arguments) == (
        "call_a", "get_weather", '{"city":"Rome"}')  # fmt: skip
    assert second.type == "function_call" and second.call_id == "call_b" and second.id and second.id.startswith("fc_")
    assert parsed.usage is not None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.total_tokens) == (30, 12, 42)
    assert parsed.usage.input_tokens_details.cached_tokens == 8
    assert parsed.usage.output_tokens_details.reasoning_tokens == 5


@pytest.mark.parametrize(("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")])
def test_encode_response_incomplete(finish: Any, reason: str) -> None:
    parsed = SDKResponse.model_validate(
        orjson.loads(CODEC.encode_response(Response("r", "m", [Text("cut")], finish=finish)))
    )
    assert parsed.status == "incomplete"
    assert parsed.incomplete_details is not None and parsed.incomplete_details.reason == reason
    assert parsed.output_text == "cut"


def test_decode_response() -> None:
    body: dict[str, Any] = {
        "id": "resp_9", "object": "response", "status": "completed", "model": "gpt-5-codex",
        "output": [
            {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "a"},
                                                             {"type": "summary_text", "text": "b"}],
             "encrypted_content": SIGNED},
            {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "content": [
                {"type": "output_text", "text": "Hi", "annotations": []}]},
            {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{\"x\":1}",
             "status": "completed"},
            {"id": "ws_1", "type": "web_search_call", "status": "completed"},
        ],
        "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 7,
                  "output_tokens_details": {"reasoning_tokens": 3}, "total_tokens": 17},
    }  # fmt: skip
    decoded = CODEC.decode_response(body)
    assert (decoded.id, decoded.model, decoded.finish) == ("resp_9", "gpt-5-codex", "tool_calls")
    assert decoded.parts == [Thinking("a\n\nb", SIGNED), Text("Hi"), ToolCall("call_1", "f", '{"x":1}')]
    assert decoded.usage == Usage(input=10, output=7, cached=4, reasoning=3)
    cut = {**body, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}, "output": []}
    assert CODEC.decode_response(cut).finish == "length"
    filtered = {**cut, "incomplete_details": {"reason": "content_filter"}}
    assert CODEC.decode_response(filtered).finish == "content_filter"
    assert CODEC.decode_response({**body, "output": body["output"][:2]}).finish == "stop"


def test_encode_error_is_openai_shaped() -> None:
    assert orjson.loads(CODEC.encode_error(429, "slow down", "rate_limited")) == {
        "error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limited"}
    }
    assert CODEC.upstream_path("gpt-5", True) == CODEC.upstream_path("gpt-5", False) == "/responses"


# -- the stream encoder ---------------------------------------------------------------------------------

#: A turn with everything: reasoning (then its signature), text, two calls whose arguments interleave,
#: and usage that arrives in a Finish of its own after the finish reason.
TURN: list[Event] = [
    MessageStart("abc", "gpt-proxy"),
    ThinkingDelta("Need "), ThinkingDelta("two tools."), ThinkingDelta("", SIGNED),
    TextDelta("Checking "), TextDelta("the "), TextDelta("weather."),
    ToolCallStart(0, "call_w", "get_weather"), ToolCallDelta(0, '{"city":'),
    ToolCallStart(1, "call_t", "get_time"), ToolCallDelta(0, '"Paris"}'), ToolCallDelta(1, '{"zone":"CET"}'),
    Finish("tool_calls"),
    Finish(None, Usage(input=40, output=20, cached=10, reasoning=6)),
]  # fmt: skip
TOOL_REQUEST = Request(model="gpt-proxy", messages=[Message("user", [Text("hi")])], tools=[WEATHER, TIME],
                       stream=True, system=[Text("Be brief.")])  # fmt: skip


def test_stream_encoder_emits_valid_sdk_events_in_order() -> None:
    events = sse_events(encode_stream(TURN, TOOL_REQUEST))
    for name, data in events:
        STREAM_EVENT.validate_python(data)  # every event is a ResponseStreamEvent, strictly
        assert name == data["type"]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    kinds = [data["type"] for _, data in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 4
    assert kinds.count("response.function_call_arguments.done") == 2
    assert kinds.count("response.output_text.done") == kinds.count("response.content_part.done") == 1
    assert kinds.count("response.reasoning_summary_text.done") == 1
    done = {d["item"]["type"]: d["item"] for _, d in events if d["type"] == "response.output_item.done"}
    assert done["reasoning"]["encrypted_content"] == SIGNED
    assert done["reasoning"]["summary"] == [{"type": "summary_text", "text": "Need two tools."}]
    arguments = [d["arguments"] for _, d in events if d["type"] == "response.function_call_arguments.done"]
    assert arguments == ['{"city":"Paris"}', '{"zone":"CET"}']
    final = SDKResponse.model_validate(events[-1][1]["response"])
    assert final.id == "resp_abc" and final.status == "completed"
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call", "function_call"]
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (40, 20)
    assert final.instructions == "Be brief." and [t.name for t in final.tools] == ["get_weather", "get_time"]  # type: ignore[union-attr]


async def test_sdk_consumes_the_stream(aiohttp_server: Server) -> None:
    base_url, bodies = await serve_sse(aiohttp_server, encode_stream(TURN, TOOL_REQUEST))
    sdk = client(base_url)
    stream = await sdk.responses.create(model="gpt-proxy", input="hi", stream=True)
    seen = [event async for event in stream]
    assert "".join(e.delta for e in seen if e.type == "response.output_text.delta") == "Checking the weather."
    assert "".join(e.delta for e in seen if e.type == "response.reasoning_summary_text.delta") == "Need two tools."
    assert [e.arguments for e in seen if e.type == "response.function_call_arguments.done"] == [
        '{"city":"Paris"}', '{"zone":"CET"}']  # fmt: skip
    assert seen[-1].type == "response.completed"

    async with sdk.responses.stream(model="gpt-proxy", input="hi") as helper:
        deltas = [e.delta async for e in helper if e.type == "response.output_text.delta"]
        final = await helper.get_final_response()
    assert deltas == ["Checking ", "the ", "weather."]
    assert final.output_text == "Checking the weather."
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_w", "get_weather", '{"city":"Paris"}'), ("call_t", "get_time", '{"zone":"CET"}')]  # fmt: skip
    assert final.usage is not None and final.usage.total_tokens == 60
    assert final.usage.input_tokens_details.cached_tokens == 10
    assert len(bodies) == 2 and bodies[1]["stream"] is True


async def test_sdk_sees_an_incomplete_stream(aiohttp_server: Server) -> None:
    payload = encode_stream([MessageStart("x", "m"), TextDelta("half"), Finish("length", Usage(3, 16))])
    base_url, _ = await serve_sse(aiohttp_server, payload)
    stream = await client(base_url).responses.create(model="m", input="hi", stream=True)
    last = [event async for event in stream][-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output_text == "half" and last.response.usage is not None


async def test_stream_error_becomes_response_failed(aiohttp_server: Server) -> None:
    encoder = CODEC.stream_encoder(Request(model="m", messages=[], stream=True))
    turn: list[Event] = [MessageStart("x", "m"), TextDelta("par"), StreamError(502, "went away"), TextDelta("late")]
    payload = b"".join(encoder.encode(e) for e in turn)
    assert encoder.close() == b""  # the failure was the terminal event
    events = sse_events(payload)
    for _, data in events:
        STREAM_EVENT.validate_python(data)
    assert events[-1][1]["response"]["error"] == {"code": "server_error", "message": "went away"}
    base_url, _ = await serve_sse(aiohttp_server, payload)
    async with client(base_url).responses.stream(model="m", input="hi") as helper:
        kinds = [event.type async for event in helper]
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds

    alone = sse_events(CODEC.stream_encoder(Request(model="m", messages=[])).encode(StreamError(429, "slow")))
    assert [d["type"] for _, d in alone] == ["response.created", "response.in_progress", "response.failed"]
    assert alone[-1][1]["response"]["error"]["code"] == "rate_limit_exceeded"


# -- the stream decoder ---------------------------------------------------------------------------------


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps({**e, "sequence_number": n}) + b"\n\n"
        for n, e in enumerate(events)
    )


def decode_stream(raw: bytes) -> list[Event]:
    decoder = CODEC.event_decoder()
    return [event for name, data in SSEParser().feed(raw) for event in decoder.feed(name, data)]


def test_stream_decoder_on_a_realistic_sequence() -> None:
    shell = {"id": "resp_7", "object": "response", "model": "gpt-5-codex", "status": "in_progress", "output": []}
    usage = {"input_tokens": 50, "input_tokens_details": {"cached_tokens": 20}, "output_tokens": 9,
             "output_tokens_details": {"reasoning_tokens": 4}, "total_tokens": 59}  # fmt: skip
    rs, msg = {"item_id": "rs_1", "output_index": 0}, {"item_id": "msg_1", "output_index": 1, "content_index": 0}
    raw = _sse(
        {"type": "response.created", "response": shell},
        {"type": "response.in_progress", "response": shell},
        {"type": "response.output_item.added", "output_index": 0, "item": {"id": "rs_1", "type": "reasoning",
                                                                            "summary": []}},
        {"type": "response.reasoning_summary_part.added", **rs, "summary_index": 0, "part": {"type": "summary_text",
                                                                                              "text": ""}},
        {"type": "response.reasoning_summary_text.delta", **rs, "summary_index": 0, "delta": "First"},
        {"type": "response.reasoning_summary_text.done", **rs, "summary_index": 0, "text": "First"},
        {"type": "response.reasoning_summary_text.delta", **rs, "summary_index": 1, "delta": "Second"},
        {"type": "response.output_item.done", "output_index": 0, "item": {
            "id": "rs_1", "type": "reasoning", "encrypted_content": SIGNED,
            "summary": [{"type": "summary_text", "text": "First"}, {"type": "summary_text", "text": "Second"}]}},
        {"type": "response.output_item.added", "output_index": 1, "item": {
            "id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}},
        {"type": "response.output_text.delta", **msg, "delta": "Hel", "logprobs": []},
        {"type": "response.output_text.delta", **msg, "delta": "lo", "logprobs": []},
        {"type": "response.output_text.done", **msg, "text": "Hello", "logprobs": []},
        {"type": "response.output_item.done", "output_index": 1, "item": {
            "id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "Hello", "annotations": []}]}},
        {"type": "response.output_item.added", "output_index": 2, "item": {
            "id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 2, "delta": '{"a":'},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 2, "delta": "1}"},
        {"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 2, "arguments": '{"a":1}'},
        {"type": "response.output_item.done", "output_index": 2, "item": {
            "id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": '{"a":1}'}},
        {"type": "response.output_item.added", "output_index": 3, "item": {
            "id": "fc_2", "type": "function_call", "call_id": "call_2", "name": "g", "arguments": ""}},
        {"type": "response.function_call_arguments.done", "item_id": "fc_2", "output_index": 3, "arguments": "{}"},
        {"type": "response.output_item.done", "output_index": 3, "item": {
            "id": "fc_2", "type": "function_call", "call_id": "call_2", "name": "g", "arguments": "{}"}},
        {"type": "response.completed", "response": {**shell, "status": "completed", "usage": usage}},
    )  # fmt: skip
    assert decode_stream(raw) == [
        MessageStart("resp_7", "gpt-5-codex"),
        ThinkingDelta("First"), ThinkingDelta("\n\nSecond"), ThinkingDelta("", SIGNED),
        TextDelta("Hel"), TextDelta("lo"),
        ToolCallStart(0, "call_1", "f"), ToolCallDelta(0, '{"a":'), ToolCallDelta(0, "1}"),
        ToolCallStart(1, "call_2", "g"), ToolCallDelta(1, "{}"),  # arguments given only whole, in the .done event
        Finish("tool_calls", Usage(input=50, output=9, cached=20, reasoning=4)),
    ]  # fmt: skip


def test_stream_decoder_endings() -> None:
    shell = {"id": "resp_8", "model": "m", "output": []}
    incomplete = {**shell, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    assert decode_stream(_sse({"type": "response.created", "response": shell},
                              {"type": "response.incomplete", "response": incomplete}))[-1] == Finish(
        "length", Usage())  # fmt: skip
    failed = {**shell, "status": "failed", "error": {"code": "server_error", "message": "model crashed"}}
    assert decode_stream(_sse({"type": "response.failed", "response": failed}))[-1] == StreamError(502, "model crashed")
    assert decode_stream(_sse({"type": "error", "code": "rate_limit_exceeded", "message": "slow", "param": None})) == [
        StreamError(502, "slow")]  # fmt: skip
    assert decode_stream(b"event: response.queued\ndata: {}\n\n")[1:] == []


# -- the fake Responses API, driven by the real SDK -----------------------------------------------------


async def test_fake_upstream_answers_the_sdk(aiohttp_server: Server) -> None:
    state, base_url = await start_responses(aiohttp_server)
    sdk = client(base_url)
    plain = await sdk.responses.create(model="gpt-5-mini", input="hello there", instructions="Be kind.")
    assert plain.output_text == "echo: hello there" and plain.status == "completed"
    assert plain.usage is not None and plain.usage.output_tokens == 3

    tools: Any = [{"type": "function", "name": "get_weather", "strict": False,
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]  # fmt: skip
    called = await sdk.responses.create(
        model="gpt-5-codex", input="Oslo", tools=tools, reasoning={"effort": "low"},
        include=["reasoning.encrypted_content"], store=False,
    )  # fmt: skip
    reasoning, call = called.output
    assert reasoning.type == "reasoning" and reasoning.encrypted_content in state.issued
    assert call.type == "function_call" and (call.name, call.arguments) == ("get_weather", '{"city":"Oslo"}')

    stream = await sdk.responses.create(model="gpt-5-mini", input="stream me please", stream=True)
    events = [event async for event in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 3 and "".join(deltas) == "echo: stream me please"
    assert events[-1].type == "response.completed" and events[-1].response.usage is not None

    async with sdk.responses.stream(model="gpt-5-codex", input="Rome", tools=tools) as helper:
        final = await helper.get_final_response()
    assert [(i.type, getattr(i, "arguments", None)) for i in final.output] == [("function_call", '{"city":"Rome"}')]
    assert [r.body["model"] for r in state.received] == ["gpt-5-mini", "gpt-5-codex", "gpt-5-mini", "gpt-5-codex"]


async def test_fake_upstream_refuses_like_the_api(aiohttp_server: Server) -> None:
    state, base_url = await start_responses(aiohttp_server)
    sdk = client(base_url)
    with pytest.raises(openai.AuthenticationError):
        await client(base_url, key="sk-wrong").responses.create(model="gpt-5-mini", input="hi")
    no_text: Any = [{"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text"}]}]
    with pytest.raises(openai.BadRequestError, match=r"'input\[0\]\.summary\[0\]\.text'"):
        await sdk.responses.create(model="gpt-5-mini", input=no_text)
    with pytest.raises(openai.BadRequestError, match="'stop'"):
        await sdk.responses.create(model="gpt-5-mini", input="hi", extra_body={"stop": ["x"]})
    with pytest.raises(openai.BadRequestError, match="No tool call found"):
        await sdk.responses.create(model="gpt-5-mini", input=[
            {"type": "function_call_output", "call_id": "call_nope", "output": "x"}])  # fmt: skip
    with pytest.raises(openai.NotFoundError, match="not persisted"):
        await sdk.responses.create(model="gpt-5-mini", store=False, input=[
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": SIGNED}])  # fmt: skip
    forged: Any = [{"type": "reasoning", "summary": [], "encrypted_content": "gAAAAAforged"}]
    with pytest.raises(openai.BadRequestError, match="could not be verified"):
        await sdk.responses.create(model="gpt-5-mini", store=False, input=forged)
    with pytest.raises(openai.BadRequestError, match="Encrypted content is not supported"):
        await sdk.responses.create(model="gpt-4o", input="hi", include=["reasoning.encrypted_content"])
    state.fail_next(Fault(429, "slow down"), Fault(503))
    with pytest.raises(openai.RateLimitError, match="slow down"):
        await sdk.responses.create(model="gpt-5-mini", input="hi")
    with pytest.raises(openai.InternalServerError):
        await sdk.responses.create(model="gpt-5-mini", input="hi", stream=True)
    assert (await sdk.responses.create(model="gpt-5-mini", input="ok")).output_text == "echo: ok"


# -- the codec against the fake: a whole tool loop, whole and streamed ----------------------------------


async def _post(base_url: str, body: bytes) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{base_url}/responses", data=body, headers={
            "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})  # fmt: skip
        await response.read()
        return response


async def test_codec_drives_a_tool_loop_through_the_fake(aiohttp_server: Server) -> None:
    state, base_url = await start_responses(aiohttp_server)
    first = Request(model="gpt-5-codex", messages=[Message("user", [Text("Paris")])], tools=[WEATHER],
                    reasoning=Reasoning(effort="medium"), system=[Text("Be brief.")])  # fmt: skip
    answer = await _post(base_url, CODEC.encode_request(first))
    assert answer.status == 200, await answer.text()
    turn = CODEC.decode_response(await answer.json())
    assert turn.finish == "tool_calls"
    thinking, call = turn.parts
    assert isinstance(thinking, Thinking) and thinking.signature in state.issued
    assert isinstance(call, ToolCall) and call.arguments == '{"city":"Paris"}'

    # the second turn carries the encrypted reasoning and the call back, with an image in the tool's output
    result = ToolResult(call.id, [Text("Sunny"), Image("image/png", data=PNG)])
    second = Request(model="gpt-5-codex", tools=[WEATHER], reasoning=Reasoning(effort="medium"), messages=[
        *first.messages, Message("assistant", turn.parts), Message("user", [result])])  # fmt: skip
    answer = await _post(base_url, CODEC.encode_request(second))
    assert answer.status == 200, await answer.text()  # the fake verified the call id and the encrypted reasoning
    final = CODEC.decode_response(await answer.json())
    assert final.finish == "stop" and final.parts[-1] == Text("echo: Paris")
    assert final.usage.input > 0 and final.usage.reasoning > 0
    assert state.received[1].body["input"][1]["type"] == "reasoning"


async def test_fake_stream_decodes_and_re_encodes_for_the_sdk(aiohttp_server: Server) -> None:
    """Provider stream -> canonical events -> a Responses client's stream, consumed by the SDK helper."""
    _, base_url = await start_responses(aiohttp_server)
    request = Request(model="gpt-5-codex", messages=[Message("user", [Text("Lima")])], tools=[WEATHER],
                      reasoning=Reasoning(effort="low"), stream=True)  # fmt: skip
    answer = await _post(base_url, CODEC.encode_request(request))
    events = decode_stream(await answer.read())
    assert isinstance(events[0], MessageStart) and events[0].id.startswith("resp_")
    assert "".join(e.text for e in events if isinstance(e, ThinkingDelta)) == "Thinking about: Lima"
    assert any(isinstance(e, ThinkingDelta) and e.signature for e in events)
    assert next(e for e in events if isinstance(e, ToolCallStart)).name == "get_weather"
    assert "".join(e.arguments for e in events if isinstance(e, ToolCallDelta)) == '{"city":"Lima"}'
    finish = events[-1]
    assert isinstance(finish, Finish) and finish.reason == "tool_calls" and finish.usage is not None

    sse_url, _ = await serve_sse(aiohttp_server, encode_stream(events, request))
    async with client(sse_url).responses.stream(model="gpt-5-codex", input="Lima") as helper:
        final = await helper.get_final_response()
    assert [item.type for item in final.output] == ["reasoning", "function_call"]
    assert final.output[1].type == "function_call" and final.output[1].arguments == '{"city":"Lima"}'
    assert final.usage is not None and final.usage.output_tokens == finish.usage.output
