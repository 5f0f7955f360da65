"""Byte-level pass-through: model rewriting and SSE event cutting without re-encoding bodies."""

from __future__ import annotations

import orjson
import pytest

from cliproxy_proxy.relay import ModelRewrite, SSERelay
from cliproxy_proxy.translate import ANTHROPIC, GEMINI, OPENAI_CHAT, OPENAI_COMPLETIONS, RESPONSES
from cliproxy_proxy.translate.canonical import Usage
from cliproxy_proxy.translate.codec import Codec


def test_rewrite_handles_both_common_spellings_and_odd_spacing() -> None:
    rewrite = ModelRewrite("up/model:free", "team/alias")
    assert rewrite(b'{"model":"up/model:free","x":1}') == b'{"model":"team/alias","x":1}'
    assert rewrite(b'{"model": "up/model:free"}') == b'{"model": "team/alias"}'
    assert rewrite(b'{"model"  :\t"up/model:free"}') == b'{"model"  :\t"team/alias"}'


def test_rewrite_leaves_content_that_merely_mentions_the_model() -> None:
    rewrite = ModelRewrite("gpt-x", "alias")
    body = orjson.dumps({"model": "gpt-x", "content": 'say "model":"gpt-x" please', "other_model": "gpt-x"})
    document = orjson.loads(rewrite(body))
    assert document == {"model": "alias", "content": 'say "model":"gpt-x" please', "other_model": "gpt-x"}


def test_rewrite_escapes_special_characters_in_the_alias() -> None:
    rewrite = ModelRewrite("m", 'we\\ird"alias')
    assert orjson.loads(rewrite(b'{"model": "m"}')) == {"model": 'we\\ird"alias'}


def test_relay_holds_partial_events_until_they_complete() -> None:
    relay = SSERelay(ModelRewrite("up", "alias"), OPENAI_CHAT.stream_end, OPENAI_CHAT)
    event = b'data: {"model":"up","choices":[]}\n\n'
    assert relay.feed(event[:10]) == b""
    assert relay.feed(event[10:] + event[:5]) == b'data: {"model":"alias","choices":[]}\n\n'
    assert relay.feed(event[5:] + b"data: [DONE]\n\n") == b'data: {"model":"alias","choices":[]}\n\ndata: [DONE]\n\n'
    assert relay.flush() == b""


def test_relay_cuts_crlf_events_and_flushes_a_tail_without_blank_line() -> None:
    relay = SSERelay(None, OPENAI_CHAT.stream_end, OPENAI_CHAT)
    assert relay.feed(b"data: 1\r\n\r\ndata: 2") == b"data: 1\r\n\r\n"
    assert relay.flush() == b"data: 2"


def _event(document: object, name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + orjson.dumps(document) + b"\n\n"


def test_relay_reads_the_last_usage_it_sees() -> None:
    relay = SSERelay(None, OPENAI_CHAT.stream_end, OPENAI_CHAT)
    relay.feed(b'data: {"choices":[],"usage":null}\n\n')
    assert relay.usage is None
    relay.feed(b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}\n\n')
    relay.feed(b'data: not json but mentions "usage"\n\n')
    assert relay.usage == Usage(7, 3)


_ANTHROPIC_STREAM = _event(
    {
        "type": "message_start",
        "message": {
            "usage": {
                "input_tokens": 5,
                "cache_read_input_tokens": 40,
                "cache_creation_input_tokens": 8,
                "output_tokens": 1,
            }
        },
    }
) + _event({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 12}})
_GEMINI_STREAM = b"".join(
    _event(
        {
            "candidates": [],
            "usageMetadata": {"promptTokenCount": 50, "cachedContentTokenCount": 30, "candidatesTokenCount": n},
        }
    )
    for n in (1, 6, 9)
)
_RESPONSES_STREAM = _event({"type": "response.created", "response": {"usage": None}}) + _event(
    {
        "type": "response.completed",
        "response": {"usage": {"input_tokens": 20, "output_tokens": 4, "input_tokens_details": {"cached_tokens": 16}}},
    }
)
_OPENAI_STREAM = _event(
    {
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 8}},
    }
)


@pytest.mark.parametrize(
    ("codec", "events", "usage"),
    [
        (ANTHROPIC, _ANTHROPIC_STREAM, Usage(input=53, output=12, cached=40, cache_write=8)),
        (GEMINI, _GEMINI_STREAM, Usage(input=50, output=9, cached=30)),
        (RESPONSES, _RESPONSES_STREAM, Usage(input=20, output=4, cached=16)),
        (OPENAI_CHAT, _OPENAI_STREAM, Usage(input=9, output=2, cached=8)),
    ],
)  # fmt: skip
def test_a_passed_through_stream_reads_its_own_wires_usage_with_cached_tokens(
    codec: Codec, events: bytes, usage: Usage
) -> None:
    """Each wire reports usage its own way (Anthropic's in two parts, Gemini's as running totals): all are read."""
    relay = SSERelay(None, codec.stream_end, codec)
    for event in events.split(b"\n\n")[:-1]:
        relay.feed(event + b"\n\n")
    assert relay.usage == usage


_SAYS_DONE = {"choices": [{"index": 0, "delta": {"content": 'data: [DONE] "finish_reason":"stop"'}}]}


@pytest.mark.parametrize(
    ("codec", "events", "complete"),
    [
        (OPENAI_CHAT, _event({"choices": [{"delta": {}, "finish_reason": "stop"}]}), True),
        (OPENAI_CHAT, b"data: [DONE]\n\n", True),
        (OPENAI_CHAT, _event({"choices": [{"delta": {"content": "x"}}]}) + b"data:[DONE]\n\n", True),
        (OPENAI_CHAT, _event({"error": {"message": "overloaded"}}), True),
        (OPENAI_CHAT, _event({"choices": [{"delta": {"content": "hi"}, "finish_reason": None}]}), False),
        (OPENAI_CHAT, _event(_SAYS_DONE), False),  # text that quotes the terminal event is not one
        (OPENAI_COMPLETIONS, _event({"choices": [{"text": "", "finish_reason": "length"}]}), True),
        (ANTHROPIC, _event({"type": "message_stop"}, "message_stop"), True),
        (ANTHROPIC, _event({"type": "error", "error": {"type": "overloaded_error"}}, "error"), True),
        (ANTHROPIC, _event({"type": "message_delta", "delta": {"stop_reason": "end_turn"}}, "message_delta"), False),
        (ANTHROPIC, _event({"type": "content_block_delta", "delta": {"text": '"type":"message_stop"'}}), False),
        (GEMINI, _event({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "STOP"}]}), True),
        (GEMINI, _event({"candidates": [{"content": {"parts": [{"text": "x"}]}}]}), False),
        (RESPONSES, _event({"type": "response.completed", "response": {}}, "response.completed"), True),
        (RESPONSES, _event({"type": "response.failed", "response": {}}, "response.failed"), True),
        (RESPONSES, _event({"type": "response.output_text.delta", "delta": "response.completed"}), False),
    ],
)  # fmt: skip
def test_each_format_knows_its_terminal_event(codec: Codec, events: bytes, complete: bool) -> None:
    relay = SSERelay(None, codec.stream_end, codec)
    assert relay.feed(events) == events
    assert relay.complete is complete
