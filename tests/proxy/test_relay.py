"""Byte-level pass-through: model rewriting and SSE event cutting without re-encoding bodies."""

from __future__ import annotations

import orjson

from cliproxy_proxy.relay import ModelRewrite, SSERelay


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
    relay = SSERelay(ModelRewrite("up", "alias"))
    event = b'data: {"model":"up","choices":[]}\n\n'
    assert relay.feed(event[:10]) == b""
    assert relay.feed(event[10:] + event[:5]) == b'data: {"model":"alias","choices":[]}\n\n'
    assert relay.feed(event[5:] + b"data: [DONE]\n\n") == b'data: {"model":"alias","choices":[]}\n\ndata: [DONE]\n\n'
    assert relay.flush() == b""


def test_relay_cuts_crlf_events_and_flushes_a_tail_without_blank_line() -> None:
    relay = SSERelay(None)
    assert relay.feed(b"data: 1\r\n\r\ndata: 2") == b"data: 1\r\n\r\n"
    assert relay.flush() == b"data: 2"


def test_relay_reads_the_last_usage_it_sees() -> None:
    relay = SSERelay(None)
    relay.feed(b'data: {"choices":[],"usage":null}\n\n')
    assert relay.usage is None
    relay.feed(b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}\n\n')
    relay.feed(b'data: not json but mentions "usage"\n\n')
    assert relay.usage == (7, 3)
