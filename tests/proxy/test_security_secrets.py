"""An upstream that echoes its own key never shows it to the client: plain, JSON-escaped, cut across chunks,
passed through or translated, in answers, streams and errors; nor does the proxy log it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp
import anthropic
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from cliproxy_proxy.scrub import _HOLD_FROM, Scrubber, TextScrubber, scrub, scrub_answer

from ..support.proxy import CLIENT_KEY, base_config, compat_block

KEY = "sk-up/echo+Key-123"  # a '/' JSON may escape as '\/', a '+' and mixed case for \uXXXX in either case


def spelled(text: str, how: str) -> bytes:
    """``text`` as a JSON string's inside, spelled one of the ways an upstream may."""
    if how == "escaped":
        return "".join(f"\\u{ord(c):04x}" for c in text).encode()
    if how == "upper-escaped":
        return "".join(f"\\u{ord(c):04X}" for c in text).encode()
    if how == "slash":
        return text.replace("/", "\\/").encode()
    return text.encode()


def completion(content: bytes) -> bytes:
    return (b'{"id":"c1","object":"chat.completion","created":1,"model":"up","choices":[{"index":0,"message":'
            b'{"role":"assistant","content":"key ' + content + b' seen"},"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}}')  # fmt: skip


def chunk_event(content: bytes, finish: bytes = b"null") -> bytes:
    return (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"up","choices":[{"index":0,'
            b'"delta":{"content":"' + content + b'"},"finish_reason":' + finish + b"}]}\n\n")  # fmt: skip


async def echo_key(request: web.Request) -> web.StreamResponse:
    """An OpenAI-shaped upstream that repeats the key it was sent, spelled as the last user message asks."""
    key = request.headers["Authorization"].removeprefix("Bearer ")
    body = await request.json()
    how = body["messages"][-1]["content"]
    if how.startswith("error-"):
        error = b'{"error":{"message":"bad key ' + spelled(key, how[6:]) + b'","type":"invalid_request_error"}}'
        return web.Response(status=400, body=error, content_type="application/json")
    if how == "two-choices":  # the key's halves end one choice's content and begin the next one's
        answer = orjson.loads(completion(b""))
        choice = answer["choices"][0]
        answer["choices"] = [
            {**choice, "message": {"role": "assistant", "content": "key " + key[:7]}},
            {**choice, "index": 1, "message": {"role": "assistant", "content": key[7:] + " seen"}},
        ]
        return web.json_response(answer)
    if not body.get("stream"):
        return web.Response(body=completion(spelled(key, how)), content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    if how.startswith("pieces-"):  # generated text: the key a few characters per event
        size = int(how[7:])
        middle = b"".join(chunk_event(key[i : i + size].encode()) for i in range(0, len(key), size))
    else:
        middle = chunk_event(spelled(key, how))
    events = chunk_event(b"key ") + middle + chunk_event(b" seen", b'"stop"')
    for start in range(0, len(events), 7):  # cut everywhere, the key's spelling included
        await response.write(events[start : start + 7])
        await asyncio.sleep(0)
    await response.write(b"data: [DONE]\n\n")
    return response


@pytest.fixture
async def echo_url(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> str:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", echo_key)
    server = await aiohttp_server(app)
    return str(server.make_url("/v1"))


HOWS = ["plain", "escaped", "upper-escaped", "slash"]


@pytest.mark.parametrize("how", HOWS)
async def test_passed_through_answers_and_streams_are_scrubbed(echo_url: str, start_proxy, how: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(echo_url, keys=(KEY,))]}))
    client = running.client()
    messages = [{"role": "user", "content": how}]
    answer = await client.chat.completions.create(model="small", messages=messages)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "key [REDACTED] seen"
    stream = await client.chat.completions.create(model="small", messages=messages, stream=True)  # type: ignore[arg-type]
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "key [REDACTED] seen"
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model="small", messages=[{"role": "user", "content": f"error-{how}"}])
    assert refused.value.message.endswith("bad key [REDACTED]")
    assert KEY not in caplog.text


@pytest.mark.parametrize("how", HOWS)
async def test_translated_answers_and_streams_are_scrubbed(echo_url: str, start_proxy, how: str) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(echo_url, keys=(KEY,))]}))
    claude = anthropic.AsyncAnthropic(base_url=running.url, api_key=CLIENT_KEY, max_retries=0)
    message = await claude.messages.create(model="small", max_tokens=10, messages=[{"role": "user", "content": how}])
    assert message.content[0].text == "key [REDACTED] seen"  # type: ignore[union-attr]
    async with claude.messages.stream(model="small", max_tokens=10,
                                      messages=[{"role": "user", "content": how}]) as stream:  # fmt: skip
        text = "".join([t async for t in stream.text_stream])
    assert text == "key [REDACTED] seen"
    with pytest.raises(anthropic.BadRequestError) as refused:
        await claude.messages.create(model="small", max_tokens=10,
                                     messages=[{"role": "user", "content": f"error-{how}"}])  # fmt: skip
    assert KEY not in str(refused.value.body) and "[REDACTED]" in str(refused.value.body)


async def test_raw_bytes_hold_no_spelling_of_the_key(echo_url: str, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(echo_url, keys=(KEY,))]}))
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as session:
        for how in HOWS:
            for stream in (False, True):
                body = {"model": "small", "stream": stream, "messages": [{"role": "user", "content": how}]}
                async with session.post(running.url + "/v1/chat/completions", json=body) as response:
                    raw = await response.read()
                assert b"[REDACTED]" in raw
                for spelling in HOWS:
                    assert spelled(KEY, spelling) not in raw, (how, stream, spelling)
                strings = [
                    line[5:] for line in raw.splitlines() if line.startswith(b"data:") and line != b"data: [DONE]"
                ]
                for document in strings or [raw]:
                    assert KEY not in orjson.loads(document).__repr__()


@pytest.mark.parametrize(("size", "shown"), [(5, ""), (1, "sk-"), (2, "sk")])
async def test_a_key_streamed_piece_by_piece_is_cut_from_the_text(echo_url: str, start_proxy, size: int,
                                                                  shown: str) -> None:  # fmt: skip
    """Pieces of four characters and more wait for the next event; a shorter first piece may have gone out."""
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(echo_url, keys=(KEY,))]}))
    messages = [{"role": "user", "content": f"pieces-{size}"}]
    stream = await running.client().chat.completions.create(model="small", messages=messages, stream=True)  # type: ignore[arg-type]
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == f"key {shown}[REDACTED] seen"
    claude = anthropic.AsyncAnthropic(base_url=running.url, api_key=CLIENT_KEY, max_retries=0)
    async with claude.messages.stream(model="small", max_tokens=10, messages=messages) as translated:  # type: ignore[arg-type]
        assert "".join([t async for t in translated.text_stream]) == f"key {shown}[REDACTED] seen"


def test_text_that_begins_no_key_never_waits() -> None:
    pieces = TextScrubber(KEY)
    for text in (b"sk-u", b"p/ec", b"ho+K", b"ey-1"):  # the key's first characters: held, event after event
        assert pieces.feed(b'data: {"delta":"%s"}\n\n' % text) == b""
    assert pieces.feed(b'data: {"delta":"!"}\n\n') == (b'data: {"delta":"sk-u"}\n\ndata: {"delta":"p/ec"}\n\n'
        b'data: {"delta":"ho+K"}\n\ndata: {"delta":"ey-1"}\n\ndata: {"delta":"!"}\n\n')  # fmt: skip
    event = b'data: {"choices":[{"delta":{"content":"ask- sk sk-"}}]}\n\n'
    assert pieces.feed(event) == event  # three characters of the key: not enough to wait for


def test_a_stream_holds_back_only_what_may_start_the_key() -> None:
    scrubber = Scrubber(KEY)
    event = b'data: {"delta":"sss \\u0073"}\n\n'
    assert scrubber.feed(event) == event  # a whole event ends in a blank line: it never waits
    assert scrubber.feed(b'data: {"x":"sk-up/ec') == b'data: {"x":"'
    assert scrubber.feed(b'ho+Key-123"}\n\n') == b'[REDACTED]"}\n\n'
    assert scrubber.feed(b"tail sk-") == b"tail "
    assert scrubber.flush() == b"sk-"  # the stream ended: what waited goes out (it is no key)
    assert scrub(b"sk-up/echo+Key-12", KEY) == b"sk-up/echo+Key-12"


OTHER = st.text(alphabet=" .,:;!?QWZ\u00e9", max_size=6)  # text that shares no character with the key
PROPERTY = settings(max_examples=60, deadline=None, database=None)


def texts_of(body: bytes) -> str:
    """Every generated text value of a body or of a run of SSE events, joined."""
    events = [line[5:] for line in body.splitlines() if line.startswith(b"data:")] or [body]
    joined = []
    for event in events:
        document = orjson.loads(event)
        for block in document.get("content") or [c["delta"] for c in document.get("choices", [])]:
            joined.append(block.get("text") or block.get("content") or "")
    return "".join(joined)


async def test_a_key_split_across_two_choices_is_cut_from_the_answer(echo_url: str, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(echo_url, keys=(KEY,))]}))
    messages = [{"role": "user", "content": "two-choices"}]
    answer = await running.client().chat.completions.create(model="small", messages=messages)  # type: ignore[arg-type]
    assert [c.message.content for c in answer.choices] == ["key [REDACTED]", " seen"]


@PROPERTY
@given(cut=st.integers(1, len(KEY) - 1), hows=st.tuples(st.sampled_from(HOWS), st.sampled_from(HOWS)),
       before=OTHER, after=OTHER)  # fmt: skip
def test_a_key_split_across_two_values_of_an_answer_is_cut(cut: int, hows: tuple[str, str], before: str,
                                                           after: str) -> None:  # fmt: skip
    first = orjson.dumps(before)[1:-1] + spelled(KEY[:cut], hows[0])
    second = spelled(KEY[cut:], hows[1]) + orjson.dumps(after)[1:-1]
    body = (b'{"type":"message","content":[{"type":"text","text":"' + first + b'"},'
            b'{"type":"text","text":"' + second + b'"}]}')  # fmt: skip
    assert texts_of(scrub_answer(body, KEY)) == before + "[REDACTED]" + after


@PROPERTY
@given(cuts=st.sets(st.integers(1, len(KEY) - 1), max_size=len(KEY) - 1), hows=st.lists(st.sampled_from(HOWS),
       min_size=len(KEY), max_size=len(KEY)), batch=st.integers(1, 4), before=OTHER, after=OTHER)  # fmt: skip
def test_a_key_streamed_in_any_pieces_shows_at_most_its_first_three_characters(
    cuts: set[int], hows: list[str], batch: int, before: str, after: str
) -> None:
    """Its first three characters (a vendor's prefix, ``sk-``) may go out before the key is seen; never more."""
    bounds = [0, *sorted(cuts), len(KEY)]
    pieces = [orjson.dumps(before)[1:-1]]
    pieces += [spelled(KEY[a:b], how) for a, b, how in zip(bounds, bounds[1:], hows, strict=False)]
    events = [chunk_event(piece) for piece in [*pieces, orjson.dumps(after)[1:-1]]]
    scrubber, text = Scrubber(KEY), TextScrubber(KEY)
    sent = b"".join(text.feed(scrubber.feed(b"".join(events[i : i + batch]))) for i in range(0, len(events), batch))
    sent += text.feed(scrubber.flush()) + text.flush()
    shown = texts_of(sent)
    assert shown in [before + KEY[:size] + "[REDACTED]" + after for size in range(_HOLD_FROM)]
