"""Fault injection at the issue's rates, on the DEFAULT config: failover must hold up, and no stream may lie.

The full load (6,000 requests) runs in ``make bench`` (bench/fault_bench.py); this is its fast version, with a
margin that the old one-5xx-benches-the-key-for-60-s behaviour failed by far (1.3 % and 4.7 % succeeded).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anthropic
import openai
import pytest
from aiohttp.test_utils import TestServer

from ..fakes.faulty_openai import FaultyUpstream
from ..support.fault_load import EXPECTED, MODEL, PROMPT, drive, gateway_config, success_rate
from ..support.proxy import CLIENT_KEY

REQUESTS = 200  # per kind: a few seconds; rates asserted with room for the RNG, not for a regression


async def test_default_config_survives_ten_percent_mixed_faults(
    aiohttp_server: Callable[..., Awaitable[TestServer]], start_proxy
) -> None:  # type: ignore[no-untyped-def]
    upstreams = [FaultyUpstream(f"sk-up-{i}", MODEL, rate=0.1, seed=i) for i in range(2)]
    servers = [await aiohttp_server(u.app()) for u in upstreams]
    config = gateway_config(
        CLIENT_KEY, [(str(s.make_url("/v1")), u.key) for s, u in zip(servers, upstreams, strict=True)]
    )
    running = await start_proxy(config)
    client = running.client()

    plain = await drive(client, REQUESTS, stream=False)
    streams = await drive(client, REQUESTS, stream=True)

    faults = sum(sum(v for k, v in u.outcomes.items() if k != "ok") for u in upstreams)
    assert faults >= REQUESTS * 2 * 0.05, "the upstreams did not fail as often as the load is meant to"
    assert success_rate(plain) >= 0.99, plain
    assert success_rate(streams) >= 0.9, streams
    assert streams["truncated"] == 0, streams  # a stream cut short ends with an error, never as if complete
    assert set(streams) <= {"ok", "stream_error"}, streams  # everything that could be hidden was


async def _cut_after(events: int, aiohttp_server, start_proxy):  # type: ignore[no-untyped-def]
    """A proxy in front of one upstream whose every stream ends with a clean FIN after ``events`` events."""
    upstream = FaultyUpstream("sk-up", MODEL, rate=1.0, kinds=("fin",), cut=events)
    server = await aiohttp_server(upstream.app())
    return await start_proxy(gateway_config(CLIENT_KEY, [(str(server.make_url("/v1")), upstream.key)]))


async def test_a_stream_cut_by_a_clean_fin_is_an_error_not_a_finish(aiohttp_server, start_proxy) -> None:  # type: ignore[no-untyped-def]
    running = await _cut_after(3, aiohttp_server, start_proxy)  # role, "echo:", "the": no finish, no [DONE]
    stream = await running.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    text = ""
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text == "echo: the"  # what came is delivered, then the stream says it is incomplete
    assert "interrupted" in caught.value.message
    metrics = running.proxy.metrics
    assert metrics.errors.labels("upstream0", "stream_interrupted")._value.get() == 1


async def test_a_translated_stream_cut_short_never_fabricates_end_turn(aiohttp_server, start_proxy) -> None:  # type: ignore[no-untyped-def]
    running = await _cut_after(4, aiohttp_server, start_proxy)
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=CLIENT_KEY, max_retries=0)
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": PROMPT}]
        ) as stream:
            async for event in stream:
                seen.append(event.type)
    assert "message_stop" not in seen and "message_delta" not in seen
    assert "interrupted" in str(caught.value)
    assert EXPECTED.startswith(stream.current_message_snapshot.content[0].text)  # type: ignore[union-attr]


async def test_a_body_cut_by_a_clean_fin_fails_over(aiohttp_server, start_proxy) -> None:  # type: ignore[no-untyped-def]
    cutting = FaultyUpstream("sk-up-0", MODEL, rate=1.0, kinds=("fin",))
    healthy = FaultyUpstream("sk-up-1", MODEL, rate=0.0)
    servers = [await aiohttp_server(u.app()) for u in (cutting, healthy)]
    urls = [(str(s.make_url("/v1")), u.key) for s, u in zip(servers, (cutting, healthy), strict=True)]
    running = await start_proxy(gateway_config(CLIENT_KEY, urls))
    for _ in range(4):
        completion = await running.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}]
        )
        assert completion.choices[0].message.content == EXPECTED
    assert cutting.outcomes["fin"] >= 1  # half bodies were sent, and none reached the client
