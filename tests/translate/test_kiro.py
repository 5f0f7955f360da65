"""The Kiro codec (request encoding, event-stream decoding, collect) and token format, alone and against the fake."""

from __future__ import annotations

import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest

from cliproxy_proxy.oauth.base import RefreshRejected, TokenError, TokenSet
from cliproxy_proxy.oauth.kiro import KiroTokenFormat
from cliproxy_proxy.translate.canonical import (
    Event,
    Finish,
    Image,
    Message,
    MessageStart,
    Request,
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
from cliproxy_proxy.translate.eventstream import encode_message, event, exception
from cliproxy_proxy.translate.kiro import (
    API_PATH,
    MAX_TOOL_DESCRIPTION,
    KiroCodec,
    collect,
    error_message,
    kiro_model_id,
    request_headers,
)

from ..fakes.kiro import CLIENT_ID, CLIENT_SECRET, PROFILE_ARN, TARGET, Fault, start_kiro, validate

PNG = "iVBORw0KGgo="
WEATHER = Tool("weather", "Weather for a city", {"type": "object", "properties": {"city": {"type": "string"}}})


def _body(request: Request, **options: Any) -> dict[str, Any]:
    return dict(orjson.loads(KiroCodec(**options).encode_request(request)))


def _state(request: Request) -> dict[str, Any]:
    return dict(_body(request)["conversationState"])


def _user(text: str) -> Message:
    return Message("user", [Text(text)])


def _tool_conversation() -> list[Message]:
    return [
        _user("weather in Paris?"),
        Message("assistant", [Text("Checking."), ToolCall("tu_1", "weather", '{"city":"Paris"}')]),
        Message("user", [ToolResult("tu_1", [Text("sunny")]), Text("and tomorrow?")]),
        Message("assistant", [Text("Also sunny.")]),
        _user("thanks"),
    ]


# -- requests -------------------------------------------------------------------------------------------


def test_a_simple_request_with_a_system_prompt() -> None:
    body = _body(Request("claude-sonnet-4.5", [_user("hello")], system=[Text("Be brief.")]), profile_arn=PROFILE_ARN)
    state = body["conversationState"]
    assert body["profileArn"] == PROFILE_ARN
    assert state["chatTriggerType"] == "MANUAL"
    assert uuid.UUID(state["conversationId"])
    assert state["history"] == []
    assert state["currentMessage"] == {
        "userInputMessage": {"content": "Be brief.\n\nhello", "modelId": "claude-sonnet-4.5", "origin": "AI_EDITOR"}
    }
    assert validate(body, PROFILE_ARN) is None


def test_no_profile_arn_when_none_is_known() -> None:
    assert "profileArn" not in _body(Request("auto", [_user("hi")]))


def test_a_profile_arn_passed_per_request_wins() -> None:
    body = orjson.loads(KiroCodec("arn:one").encode_request(Request("auto", [_user("hi")]), profile_arn="arn:two"))
    assert body["profileArn"] == "arn:two"


@pytest.mark.parametrize(
    ("public", "kiro"),
    [
        ("claude-sonnet-4.5", "claude-sonnet-4.5"),
        ("claude-sonnet-4-5", "claude-sonnet-4.5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4.5"),
        ("kiro-claude-haiku-4.5", "claude-haiku-4.5"),
        ("amazonq-claude-sonnet-4", "claude-sonnet-4"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("auto", "auto"),
        ("some-new-model", "some-new-model"),
    ],
)
def test_model_ids(public: str, kiro: str) -> None:
    assert kiro_model_id(public) == kiro


def test_history_alternates_with_tool_uses_and_results() -> None:
    state = _state(Request("claude-sonnet-4", _tool_conversation(), system=[Text("sys")], tools=[WEATHER]))
    history = state["history"]
    assert [next(iter(h)) for h in history] == ["userInputMessage", "assistantResponseMessage"] * 2
    assert history[0]["userInputMessage"]["content"] == "sys\n\nweather in Paris?"
    assert history[1]["assistantResponseMessage"] == {
        "content": "Checking.",
        "toolUses": [{"toolUseId": "tu_1", "name": "weather", "input": {"city": "Paris"}}],
    }
    answer = history[2]["userInputMessage"]
    assert answer["content"] == "and tomorrow?"
    assert answer["modelId"] == "claude-sonnet-4"
    assert answer["userInputMessageContext"] == {
        "toolResults": [{"toolUseId": "tu_1", "content": [{"text": "sunny"}], "status": "success"}]
    }
    current = state["currentMessage"]["userInputMessage"]
    assert current["content"] == "thanks"
    assert current["userInputMessageContext"]["tools"] == [
        {"toolSpecification": {"name": "weather", "description": "Weather for a city",
                               "inputSchema": {"json": WEATHER.parameters}}}
    ]  # fmt: skip
    assert validate({"conversationState": state}, PROFILE_ARN) is None


def test_tool_results_in_the_current_message() -> None:
    messages = [
        _user("weather?"),
        Message("assistant", [ToolCall("tu_9", "weather", "")]),
        Message("user", [ToolResult("tu_9", [Text("rain")], is_error=True)]),
    ]
    state = _state(Request("auto", messages, tools=[WEATHER]))
    assert state["history"][1]["assistantResponseMessage"]["content"] == "(empty)"
    assert state["history"][1]["assistantResponseMessage"]["toolUses"][0]["input"] == {}
    current = state["currentMessage"]["userInputMessage"]
    assert current["content"] == "Tool results provided."
    context = current["userInputMessageContext"]
    assert context["toolResults"] == [{"toolUseId": "tu_9", "content": [{"text": "rain"}], "status": "error"}]
    assert len(context["tools"]) == 1
    assert validate({"conversationState": state}, PROFILE_ARN) is None


def test_an_orphan_tool_result_becomes_text() -> None:
    state = _state(Request("auto", [Message("user", [ToolResult("ghost", [Text("42")]), Text("go on")])]))
    current = state["currentMessage"]["userInputMessage"]
    assert current["content"] == "[result of tool call ghost]\n42\n\ngo on"
    assert "userInputMessageContext" not in current


def test_images_inline_and_from_tool_results() -> None:
    messages = [
        _user("look"),
        Message("assistant", [ToolCall("tu_1", "shot", "{}")]),
        Message("user", [Image("image/jpg", data=PNG), ToolResult("tu_1", [Image("image/png", data=PNG)])]),
    ]
    current = _state(Request("auto", messages))["currentMessage"]["userInputMessage"]
    assert current["images"] == [
        {"format": "jpeg", "source": {"bytes": PNG}},
        {"format": "png", "source": {"bytes": PNG}},
    ]
    assert current["userInputMessageContext"]["toolResults"][0]["content"] == [{"text": ""}]


def test_url_images_and_odd_types_are_refused() -> None:
    with pytest.raises(TranslationError, match="inline"):
        _body(Request("auto", [Message("user", [Image("image/png", url="https://x/y.png")])]))
    with pytest.raises(TranslationError, match="not accepted"):
        _body(Request("auto", [Message("user", [Image("image/bmp", data=PNG)])]))


def test_arguments_that_are_not_an_object_are_refused() -> None:
    messages = [_user("a"), Message("assistant", [ToolCall("t", "f", "[1]")]), _user("b")]
    with pytest.raises(TranslationError, match="not a JSON object"):
        _body(Request("auto", messages))


def test_alternation_is_repaired() -> None:
    messages = [Message("assistant", [Text("hi there")]), _user("a"), _user("b"), Message("assistant", [Text("c")])]
    state = _state(Request("auto", messages))
    users = [h["userInputMessage"]["content"] for h in state["history"] if "userInputMessage" in h]
    assert users == ["(continued)", "a\n\nb"]
    assert state["currentMessage"]["userInputMessage"]["content"] == "Continue"
    assert validate({"conversationState": state}, PROFILE_ARN) is None


def test_tool_choice_none_leaves_tools_out_and_descriptions_are_fitted() -> None:
    state = _state(Request("auto", [_user("a")], tools=[WEATHER], tool_choice="none"))
    assert "userInputMessageContext" not in state["currentMessage"]["userInputMessage"]
    long = Tool("big", "é" * 9000, {"type": "object"})
    bare = Tool("bare", None, {"type": "object"})
    tools = _state(Request("auto", [_user("a")], tools=[long, bare]))["currentMessage"]["userInputMessage"][
        "userInputMessageContext"
    ]["tools"]
    described = tools[0]["toolSpecification"]["description"]
    assert described.endswith("...") and len(described.encode()) <= MAX_TOOL_DESCRIPTION + 3
    assert tools[1]["toolSpecification"]["description"] == "bare"


def test_upstream_path_and_headers() -> None:
    codec = KiroCodec()
    assert codec.name == "kiro"
    assert codec.upstream_path("claude-sonnet-4.5", stream=False) == API_PATH == "/generateAssistantResponse"
    headers = request_headers()
    assert headers["Content-Type"] == "application/json"
    assert "Authorization" not in headers
    assert headers["amz-sdk-invocation-id"] != request_headers()["amz-sdk-invocation-id"]


# -- streams --------------------------------------------------------------------------------------------


def _text_stream(*pieces: str) -> bytes:
    frames = [event("assistantResponseEvent", orjson.dumps({"content": p})) for p in pieces]
    frames.append(event("meteringEvent", orjson.dumps({"unit": "credit", "usage": 0.01})))
    frames.append(event("contextUsageEvent", orjson.dumps({"contextUsagePercentage": 2.0})))
    return b"".join(frames)


def _decode(data: bytes, step: int) -> list[Event]:
    decoder = KiroCodec().stream_decoder("claude-sonnet-4.5")
    events: list[Event] = []
    for at in range(0, len(data), step):
        events.extend(decoder.feed(data[at : at + step]))
    return events + decoder.close()


@pytest.mark.parametrize("step", [1, 5, 64, 100_000])
def test_text_stream_decodes_at_any_chunking(step: int) -> None:
    events = _decode(_text_stream("Hel", "lo ", "world"), step)
    assert isinstance(events[0], MessageStart) and events[0].model == "claude-sonnet-4.5"
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hel", "lo ", "world"]
    assert events[-1] == Finish("stop", Usage(input=4000))


def test_tool_use_fragments_become_a_tool_call() -> None:
    pieces = ['{"ci', 'ty":', '"Paris"}']
    frames = [event("assistantResponseEvent", b'{"content":"One moment."}')]
    frames += [
        event("toolUseEvent", orjson.dumps({"name": "weather", "toolUseId": "tu_a", "input": p})) for p in pieces
    ]
    frames.append(event("toolUseEvent", b'{"name":"weather","toolUseId":"tu_a","stop":true}'))
    frames.append(event("toolUseEvent", b'{"name":"clock","toolUseId":"tu_b","input":{"tz":"UTC"},"stop":true}'))
    events = _decode(b"".join(frames), 9)
    assert [e for e in events if isinstance(e, ToolCallStart | ToolCallDelta)] == [
        ToolCallStart(0, "tu_a", "weather"), *(ToolCallDelta(0, p) for p in pieces),
        ToolCallStart(1, "tu_b", "clock"), ToolCallDelta(1, '{"tz":"UTC"}'),
    ]  # fmt: skip
    assert events[-1] == Finish("tool_calls", Usage())
    response = collect(events)
    assert response.finish == "tool_calls"
    assert response.parts == [
        Text("One moment."), ToolCall("tu_a", "weather", '{"city":"Paris"}'), ToolCall("tu_b", "clock", '{"tz":"UTC"}')
    ]  # fmt: skip


def test_token_counts_win_over_the_estimate() -> None:
    usage = orjson.dumps({"tokenUsage": {"uncachedInputTokens": 10, "outputTokens": 5, "cacheReadInputTokens": 2,
                                         "cacheWriteInputTokens": 3, "totalTokens": 20}})  # fmt: skip
    data = _text_stream("hi") + event("metadataEvent", usage)
    assert _decode(data, 1000)[-1] == Finish("stop", Usage(input=15, output=5, cached=2))


def test_an_exception_mid_stream_ends_it() -> None:
    data = _text_stream("partial") + exception("ThrottlingException", b'{"message":"Too many requests"}')
    events = _decode(data + _text_stream("never"), 17)
    assert events[-1] == StreamError(429, "ThrottlingException: Too many requests")
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["partial"]
    with pytest.raises(UpstreamFailed) as failed:
        collect(events)
    assert failed.value.status == 429


def test_error_messages_and_damage_become_stream_errors() -> None:
    error = encode_message({":message-type": "error", ":error-code": "InternalFailure", ":error-message": "boom"}, b"")
    assert _decode(error, 100)[-1] == StreamError(500, "InternalFailure: boom")
    damaged = bytearray(_text_stream("hello"))
    damaged[20] ^= 0xFF
    (failure,) = [e for e in _decode(bytes(damaged), 100) if isinstance(e, StreamError)]
    assert failure.status == 502 and "CRC" in failure.message
    cut = _text_stream("hello")[:-3]
    assert _decode(cut, 100)[-1] == StreamError(502, "Kiro stream ended in the middle of a message")


def test_an_empty_stream_still_starts_and_finishes() -> None:
    events = _decode(b"", 1)
    assert isinstance(events[0], MessageStart)
    assert events[1:] == [Finish("stop", Usage())]
    assert collect(events).parts == []


def test_error_message_reads_kiros_error_shapes() -> None:
    body = b'{"message":"The bearer token included in the request is invalid.","reason":null}'
    assert error_message(403, body) == "The bearer token included in the request is invalid."
    assert error_message(429, b'{"message":"Slow down","reason":"DAILY_REQUEST_COUNT"}') == (
        "Slow down (DAILY_REQUEST_COUNT)"
    )
    assert error_message(502, b"<html>") == "Kiro answered HTTP 502"


# -- tokens ---------------------------------------------------------------------------------------------

IDE_FILE = {
    "accessToken": "aoaAAAA-access", "refreshToken": "aorAAAA-refresh", "expiresAt": "2030-01-02T03:04:05.678Z",
    "authMethod": "social", "provider": "Google", "profileArn": PROFILE_ARN, "region": "us-east-1",
    "unknownField": {"kept": True},
}  # fmt: skip
IDC_FILE = {
    "accessToken": "aoaBBBB", "refreshToken": "aorBBBB", "expiresAt": "2030-01-02T03:04:05Z", "authMethod": "IdC",
    "provider": "Enterprise", "region": "eu-west-1", "clientIdHash": "abc123", "startUrl": "https://x.awsapps.com/start",
}  # fmt: skip
PLUS_FILE = {
    "type": "kiro", "access_token": "aoaCCCC", "refresh_token": "aorCCCC", "profile_arn": PROFILE_ARN,
    "expires_at": "2030-01-02T03:04:05+00:00", "auth_method": "builder-id", "provider": "AWS",
    "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "region": "us-east-1", "email": "a@b.c",
}  # fmt: skip


def test_parse_the_kiro_ide_file() -> None:
    tokens = KiroTokenFormat().parse(orjson.dumps(IDE_FILE))
    assert tokens.access_token == "aoaAAAA-access" and tokens.refresh_token == "aorAAAA-refresh"
    assert tokens.expires_at == pytest.approx(1893553445.678)
    assert tokens.extra["style"] == "camel"
    assert tokens.extra["auth_method"] == "social"
    assert tokens.extra["profile_arn"] == PROFILE_ARN
    assert "aoaAAAA" not in repr(tokens) and "aorAAAA" not in repr(tokens)


def test_dump_keeps_the_ide_style_and_unknown_fields() -> None:
    form = KiroTokenFormat()
    tokens = form.parse(orjson.dumps(IDE_FILE)).replace(access_token="new-access", expires_at=1893553445.5)
    written = orjson.loads(form.dump(tokens, orjson.dumps(IDE_FILE)))
    assert written == {**IDE_FILE, "accessToken": "new-access", "expiresAt": "2030-01-02T03:04:05.500Z"}
    again = form.parse(orjson.dumps(written))
    assert (again.access_token, again.refresh_token, again.expires_at) == (
        "new-access",
        "aorAAAA-refresh",
        1893553445.5,
    )


def test_parse_and_dump_the_cliproxyapi_file() -> None:
    form = KiroTokenFormat()
    tokens = form.parse(orjson.dumps(PLUS_FILE))
    assert tokens.extra["style"] == "snake"
    assert tokens.extra["client_id"] == CLIENT_ID and tokens.extra["client_secret"] == CLIENT_SECRET
    assert CLIENT_SECRET not in repr(tokens)
    written = orjson.loads(form.dump(tokens.replace(refresh_token="rotated"), orjson.dumps(PLUS_FILE)))
    assert "accessToken" not in written
    assert written["refresh_token"] == "rotated" and written["client_secret"] == CLIENT_SECRET
    assert written["email"] == "a@b.c" and "last_refresh" in written
    assert form.parse(orjson.dumps(written)).expires_at == tokens.expires_at
    fresh = orjson.loads(form.dump(tokens, None))  # no previous file: everything needed is written
    assert fresh["auth_method"] == "builder-id" and fresh["client_id"] == CLIENT_ID and fresh["type"] == "kiro"


def test_unusable_files_are_refused() -> None:
    form = KiroTokenFormat()
    for raw in (b"nope", b"[]", b'{"refreshToken": "x"}', b'{"accessToken": "a", "expiresAt": "soon"}'):
        with pytest.raises(TokenError):
            form.parse(raw)


def test_social_refresh_request() -> None:
    form = KiroTokenFormat()
    request = form.refresh_request(form.parse(orjson.dumps(IDE_FILE)))
    assert request is not None
    assert request.url == "https://prod.us-east-1.auth.desktop.kiro.dev/refreshToken"
    assert orjson.loads(request.body) == {"refreshToken": "aorAAAA-refresh"}
    assert request.headers["Content-Type"] == "application/json"
    assert "aorAAAA" not in repr(request)


def test_idc_refresh_needs_the_device_registration() -> None:
    form = KiroTokenFormat()
    tokens = form.parse(orjson.dumps(IDC_FILE))
    assert tokens.extra["auth_method"] == "idc" and tokens.extra["client_id_hash"] == "abc123"
    with pytest.raises(TokenError, match="device registration"):
        form.refresh_request(tokens)
    registration = orjson.dumps({"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET, "expiresAt": "2030-01-01"})
    tokens = form.with_registration(tokens, registration)
    request = form.refresh_request(tokens)
    assert request is not None and request.url == "https://oidc.eu-west-1.amazonaws.com/token"
    assert orjson.loads(request.body) == {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET,
                                          "grantType": "refresh_token", "refreshToken": "aorBBBB"}  # fmt: skip
    written = orjson.loads(form.dump(tokens, orjson.dumps(IDC_FILE)))
    assert "clientSecret" not in written and "client_secret" not in written  # it stays in its own file
    with pytest.raises(TokenError):
        form.with_registration(tokens, b"{}")


def test_no_refresh_token_means_no_refresh() -> None:
    assert KiroTokenFormat().refresh_request(TokenSet("access-only")) is None


def test_parse_refresh_answers() -> None:
    form = KiroTokenFormat()
    tokens = form.parse(orjson.dumps(IDE_FILE))
    answer = orjson.dumps({"accessToken": "a2", "refreshToken": "r2", "expiresIn": 3600, "profileArn": "arn:new"})
    fresh = form.parse_refresh(tokens, 200, answer)
    assert (fresh.access_token, fresh.refresh_token, fresh.extra["profile_arn"]) == ("a2", "r2", "arn:new")
    assert fresh.expires_at == pytest.approx(time.time() + 3600, abs=5)
    kept = form.parse_refresh(tokens, 200, b'{"accessToken": "a3", "expiresIn": 60}')
    assert kept.refresh_token == "aorAAAA-refresh"
    with pytest.raises(RefreshRejected, match="invalid_grant"):
        form.parse_refresh(tokens, 400, b'{"error":"invalid_grant","error_description":"Invalid refresh token"}')
    with pytest.raises(RefreshRejected):
        form.parse_refresh(tokens, 401, b'{"message":"Invalid refresh token provided"}')
    for status, body in ((500, b"oops"), (429, b"{}"), (400, b'{"error":"invalid_request"}'), (200, b"{}")):
        with pytest.raises(TokenError) as failed:
            form.parse_refresh(tokens, status, body)
        assert not isinstance(failed.value, RefreshRejected)


# -- against the fake -----------------------------------------------------------------------------------


async def _post(session: aiohttp.ClientSession, url: str, request: Any) -> tuple[int, bytes]:
    async with session.post(url, data=request.body, headers=dict(request.headers)) as response:
        return response.status, await response.read()


async def test_social_refresh_against_the_fake(aiohttp_server: Any) -> None:
    vendor, url = await start_kiro(aiohttp_server, token_ttl=120)
    access, refresh = vendor.issue(ttl=-1)
    form = KiroTokenFormat(social_url=url)
    tokens = TokenSet(access, refresh, time.time() - 1, {"auth_method": "social", "style": "camel"})
    async with aiohttp.ClientSession() as session:
        request = form.refresh_request(tokens)
        assert request is not None
        fresh = form.parse_refresh(tokens, *await _post(session, request.url, request))
        assert vendor.valid(fresh.access_token) and fresh.refresh_token != refresh
        assert fresh.expires_at == pytest.approx(time.time() + 120, abs=5)
        assert fresh.extra["profile_arn"] == PROFILE_ARN
        with pytest.raises(RefreshRejected):  # the old refresh token was rotated away
            form.parse_refresh(tokens, *await _post(session, request.url, request))
        vendor.revoke(fresh.refresh_token)
        again = form.refresh_request(fresh)
        assert again is not None
        with pytest.raises(RefreshRejected):
            form.parse_refresh(fresh, *await _post(session, again.url, again))


async def test_oidc_refresh_against_the_fake(aiohttp_server: Any) -> None:
    vendor, url = await start_kiro(aiohttp_server)
    access, refresh = vendor.issue()
    form = KiroTokenFormat(oidc_url=url)
    tokens = form.parse(orjson.dumps({**PLUS_FILE, "access_token": access, "refresh_token": refresh}))
    async with aiohttp.ClientSession() as session:
        request = form.refresh_request(tokens)
        assert request is not None and request.url == f"{url}/token"
        fresh = form.parse_refresh(tokens, *await _post(session, request.url, request))
        assert vendor.valid(fresh.access_token)
        vendor.revoke()
        request = form.refresh_request(fresh)
        assert request is not None
        with pytest.raises(RefreshRejected, match="invalid_grant"):
            form.parse_refresh(fresh, *await _post(session, request.url, request))


async def _chat(url: str, token: str, request: Request, **headers: str) -> tuple[int, list[Event], bytes]:
    codec = KiroCodec(PROFILE_ARN)
    decoder = codec.stream_decoder(request.model)
    sent = {**request_headers(), "Authorization": f"Bearer {token}", **headers}
    path = "/" if "x-amz-target" in headers else codec.upstream_path(request.model, request.stream)
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, data=codec.encode_request(request), headers=sent) as response,
    ):
        if response.status != 200:
            return response.status, [], await response.read()
        assert response.content_type == "application/vnd.amazon.eventstream"
        events: list[Event] = []
        async for chunk in response.content.iter_chunked(13):
            events.extend(decoder.feed(chunk))
        return 200, events + decoder.close(), b""


async def test_a_conversation_with_the_fake(aiohttp_server: Any) -> None:
    vendor, url = await start_kiro(aiohttp_server)
    access, _ = vendor.issue()
    request = Request("claude-sonnet-4.5", [_user("hello there kiro")], system=[Text("Be kind.")])
    status, events, _ = await _chat(url, access, request)
    assert status == 200
    assert vendor.received[-1].problem is None
    assert vendor.received[-1].headers["x-amzn-kiro-agent-mode"] == "vibe"
    assert len([e for e in events if isinstance(e, TextDelta)]) > 1
    response = KiroCodec().collect(events, request.model)
    assert response.parts == [Text("You said: Be kind.\n\nhello there kiro")]
    assert response.finish == "stop" and response.usage.input == 3000


async def test_a_tool_round_trip_with_the_fake(aiohttp_server: Any) -> None:
    vendor, url = await start_kiro(aiohttp_server)
    access, _ = vendor.issue()
    messages = [_user("weather in Paris?")]
    status, events, _ = await _chat(url, access, Request("auto", messages, tools=[WEATHER]))
    assert status == 200
    first = collect(events)
    assert first.finish == "tool_calls"
    call = first.parts[-1]
    assert isinstance(call, ToolCall) and call.name == "weather" and orjson.loads(call.arguments)
    messages += [Message("assistant", first.parts), Message("user", [ToolResult(call.id, [Text("sunny, 21C")])])]
    status, events, _ = await _chat(url, access, Request("auto", messages, tools=[WEATHER]))
    assert status == 200, vendor.received[-1].problem
    assert collect(events).parts == [Text("You said: sunny, 21C")]


async def test_the_rpc_style_content_type_is_accepted(aiohttp_server: Any) -> None:
    vendor, url = await start_kiro(aiohttp_server)
    access, _ = vendor.issue()
    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amz-target": TARGET}
    status, events, _ = await _chat(url, access, Request("auto", [_user("hi")]), **headers)
    assert status == 200 and collect(events).parts == [Text("You said: hi")]


async def test_expired_and_unknown_tokens_get_kiros_403(aiohttp_server: Any) -> None:
    vendor, url = await start_kiro(aiohttp_server)
    expired, _ = vendor.issue(ttl=-1)
    for token in (expired, "made-up"):
        status, _, body = await _chat(url, token, Request("auto", [_user("hi")]))
        assert status == 403
        assert error_message(status, body) == "The bearer token included in the request is invalid."


async def test_the_fake_refuses_malformed_bodies(aiohttp_server: Any) -> None:
    vendor, url = await start_kiro(aiohttp_server)
    access, _ = vendor.issue()
    orphan = {"conversationState": {"chatTriggerType": "MANUAL", "conversationId": "c", "currentMessage": {
        "userInputMessage": {"content": "x", "modelId": "auto", "origin": "AI_EDITOR", "userInputMessageContext": {
            "toolResults": [{"toolUseId": "nope", "content": [{"text": "1"}], "status": "success"}]}}}}}  # fmt: skip
    headers = {**request_headers(), "Authorization": f"Bearer {access}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + API_PATH, data=orjson.dumps(orphan), headers=headers) as response,
    ):
        assert response.status == 400
        assert error_message(400, await response.read()) == "Improperly formed request."
    assert "answers no toolUse" in (vendor.received[-1].problem or "")
    assert validate({"conversationState": {**orphan["conversationState"], "history": [{"userInputMessage": {}}]}},
                    PROFILE_ARN)  # fmt: skip
    unknown_model = {"userInputMessage": {"content": "x", "modelId": "gpt-4", "origin": "AI_EDITOR"}}
    problem = validate({"conversationState": {"chatTriggerType": "MANUAL", "currentMessage": unknown_model}}, "")
    assert "Invalid model" in (problem or "")


async def test_an_in_stream_exception_from_the_fake(aiohttp_server: Any) -> None:
    vendor, url = await start_kiro(aiohttp_server)
    access, _ = vendor.issue()
    vendor.faults.append(Fault(exception="ThrottlingException"))
    vendor.faults.append(Fault(status=429, body={"message": "Too many", "reason": "DAILY_REQUEST_COUNT"}))
    status, events, _ = await _chat(url, access, Request("auto", [_user("one two three four")]))
    assert status == 200 and events[-1] == StreamError(429, "ThrottlingException: Fake failure")
    status, _, body = await _chat(url, access, Request("auto", [_user("again")]))
    assert status == 429 and error_message(status, body) == "Too many (DAILY_REQUEST_COUNT)"
