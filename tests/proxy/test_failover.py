"""Rotation, cooldown, failover and stream failure handling against a provider that misbehaves on cue."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter

import aiohttp
import openai
import pytest

from cliproxy_proxy.demo_upstream import Fault

from ..support.proxy import CLIENT_KEY, FakeProvider, base_config, compat_block

MESSAGES = [{"role": "user", "content": "ping"}]


def two_keys(provider: FakeProvider, **config: object) -> dict[str, object]:
    return base_config(**{"openai-compatibility": [compat_block(provider.url, keys=("key-a", "key-b"))]}, **config)


async def chat(running, **extra: object):  # type: ignore[no-untyped-def]
    return await running.client().chat.completions.create(model="small", messages=MESSAGES, **extra)


async def test_round_robin_spreads_requests_over_keys(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(two_keys(provider))
    for _ in range(6):
        await chat(running)
    assert Counter(r.key for r in provider.received) == {"key-a": 3, "key-b": 3}


async def test_fill_first_sticks_to_the_first_key(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(two_keys(provider, routing={"strategy": "fill-first"}))
    for _ in range(4):
        await chat(running)
    assert {r.key for r in provider.received} == {"key-a"}


async def test_failover_on_5xx_then_a_key_failing_in_a_row_is_ejected(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(two_keys(provider, routing={"strategy": "fill-first"}))
    provider.state.fail_next("key-a", Fault(status=503))
    completion = await chat(running)
    assert completion.choices[0].message.content == "echo: ping"
    assert [r.key for r in provider.received] == ["key-a", "key-b"]
    await chat(running)  # one 503 among successes rests nothing
    assert provider.received[-1].key == "key-a"
    provider.state.fail_next("key-a", Fault(status=503), Fault(status=502), Fault(status=500))
    for _ in range(3):
        await chat(running)
    await chat(running)  # three in a row: key-a is ejected for 30 s
    assert [r.key for r in provider.received[-5:]] == ["key-a", "key-b"] * 2 + ["key-b"]
    metrics = await _text(running.url, "/metrics")
    assert 'cliproxy_credential_cooldowns_total{provider="fake",reason="transient"} 1.0' in metrics
    assert 'cliproxy_credentials{provider="fake",state="cooling"} 1.0' in metrics


async def test_429_honours_retry_after_and_waits_within_the_budget(provider: FakeProvider, start_proxy) -> None:
    block = compat_block(provider.url, keys=("key-a",))
    running = await start_proxy(base_config(**{"openai-compatibility": [block], "max-retry-interval": 5}))
    provider.state.fail_next("key-a", Fault(status=429, headers={"Retry-After": "1"}))
    started = time.monotonic()
    completion = await chat(running)
    assert completion.choices[0].message.content == "echo: ping"
    assert time.monotonic() - started >= 0.9  # it waited for the Retry-After, then retried the same key
    assert len(provider.received) == 2


async def test_all_cooling_answers_model_cooldown(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(two_keys(provider))
    provider.state.fail_next("*", Fault(status=429, headers={"Retry-After": "40"}), Fault(status=429))
    with pytest.raises(openai.RateLimitError):
        await chat(running)  # both keys answer 429; the upstream's own error comes back
    with pytest.raises(openai.RateLimitError) as caught:
        await chat(running)
    assert caught.value.code == "model_cooldown"
    body = caught.value.body
    assert isinstance(body, dict) and body["reset_seconds"] >= 1
    assert int(caught.value.response.headers["Retry-After"]) == body["reset_seconds"]
    assert len(provider.received) == 2  # the second request never reached the provider


async def test_rejected_credentials_surface_as_502_without_leaking_the_key(provider: FakeProvider, start_proxy) -> None:
    block = compat_block(provider.url, keys=("sk-wrong-upstream-key",))
    running = await start_proxy(base_config(**{"openai-compatibility": [block]}))
    with pytest.raises(openai.InternalServerError) as caught:
        await chat(running)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_auth_error"
    assert "sk-wrong-upstream-key" not in caught.value.response.text
    assert "sk-wrong-upstream-key" not in await _text(running.url, "/metrics")


async def test_request_errors_pass_through_without_failover(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(two_keys(provider))
    upstream_error = {"error": {"message": "max_tokens is too large", "type": "invalid_request_error",
                                "param": "max_tokens", "code": None}}  # fmt: skip
    provider.state.fail_next("*", Fault(status=400, body=upstream_error))
    with pytest.raises(openai.BadRequestError) as caught:
        await chat(running, max_tokens=10**9)
    assert caught.value.body == upstream_error["error"]  # the provider's own error, unchanged
    assert len(provider.received) == 1
    assert running.proxy.health.cooldowns == {}
    metrics = await _text(running.url, "/metrics")
    assert 'cliproxy_requests_total{model="small",provider="fake",status="400"} 1.0' in metrics
    assert 'provider="none"' not in metrics  # counted once, against the provider that answered


async def test_unreachable_upstream_is_502_and_slow_one_is_504(provider: FakeProvider, start_proxy) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    dead = compat_block(f"http://127.0.0.1:{closed_port}/v1", name="dead")
    running = await start_proxy(base_config(**{"openai-compatibility": [dead]}))
    with pytest.raises(openai.InternalServerError) as caught:
        await chat(running)
    assert (caught.value.status_code, caught.value.code) == (502, "upstream_unavailable")

    slow = base_config(
        **{"openai-compatibility": [compat_block(provider.url)], "timeouts": {"read": 0.2}, "request-retry": 0}
    )
    running = await start_proxy(slow)
    provider.state.fail_next("*", Fault(delay=1.0))
    with pytest.raises(openai.InternalServerError) as caught:
        await chat(running)
    assert (caught.value.status_code, caught.value.code) == (504, "upstream_timeout")


async def test_stream_dropped_midway_is_not_retried(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(two_keys(provider))
    provider.state.fail_next("*", Fault(drop_after=3))
    stream = await chat(running, stream=True)
    got: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert "interrupted" in caught.value.message
    assert "".join(got) == "echo: ping"  # the three events before the cut were delivered, not replayed
    assert len(provider.received) == 1
    metrics = await _text(running.url, "/metrics")
    assert 'cliproxy_errors_total{error_type="stream_interrupted",provider="fake"} 1.0' in metrics


async def test_stream_that_fails_before_any_byte_fails_over(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(two_keys(provider, routing={"strategy": "fill-first"}))
    provider.state.fail_next("key-a", Fault(drop_after=0))
    stream = await chat(running, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "echo: ping"
    assert [r.key for r in provider.received] == ["key-a", "key-b"]


async def test_keepalive_comments_while_waiting_for_the_first_byte(provider: FakeProvider, start_proxy) -> None:
    config = base_config(
        **{"openai-compatibility": [compat_block(provider.url)], "streaming": {"keepalive-seconds": 0.1}}
    )
    running = await start_proxy(config)
    provider.state.fail_next("*", Fault(delay=0.35))
    async with aiohttp.ClientSession() as session, session.post(
        f"{running.url}/v1/chat/completions", headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        json={"model": "small", "stream": True, "messages": MESSAGES},
    ) as response:  # fmt: skip
        body = await response.read()
    assert body.startswith(b": keep-alive\n\n: keep-alive\n\n")
    assert body.endswith(b"data: [DONE]\n\n")


async def test_keepalive_then_all_failed_ends_with_an_sse_error(provider: FakeProvider, start_proxy) -> None:
    config = base_config(
        **{"openai-compatibility": [compat_block(provider.url)], "streaming": {"keepalive-seconds": 0.05},
           "request-retry": 0}
    )  # fmt: skip
    running = await start_proxy(config)
    provider.state.fail_next("*", Fault(delay=0.2, status=500))
    stream = await chat(running, stream=True)
    with pytest.raises(openai.APIError) as caught:
        async for _ in stream:
            pass
    assert "HTTP 500" in caught.value.message or "demo fault" in caught.value.message


async def test_rate_limit_moves_traffic_to_the_next_key(provider: FakeProvider, start_proxy) -> None:
    block = compat_block(provider.url, keys=("key-a",), priority=1, **{"rate-limit": {"rpm": 2}})
    backup = compat_block(provider.url, keys=("key-b",), name="backup")
    running = await start_proxy(base_config(**{"openai-compatibility": [block, backup]}))
    for _ in range(4):
        await chat(running)
    assert [r.key for r in provider.received] == ["key-a", "key-a", "key-b", "key-b"]


async def test_concurrent_requests_all_succeed_across_failures(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(two_keys(provider, **{"max-retry-interval": 0}))
    provider.state.fail_next("key-a", Fault(status=502))
    results = await asyncio.gather(*(chat(running) for _ in range(40)))
    assert all(r.choices[0].message.content == "echo: ping" for r in results)
    assert running.proxy.metrics.summary("fake")["in_flight"] == 0


async def _text(url: str, path: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url + path) as response:
        return await response.text()


LEGACY_404 = {"error": {"message": "This is a chat model and not supported in the v1/completions endpoint. Did you "
                        "mean to use v1/chat/completions?", "type": "invalid_request_error", "param": "model",
                        "code": None}}  # fmt: skip


async def test_a_404_on_one_endpoint_rests_only_that_endpoint(provider: FakeProvider, start_proxy) -> None:
    block = compat_block(provider.url, models=(("up-small", "small"), ("up-small", "other-alias")))
    running = await start_proxy(base_config(**{"openai-compatibility": [block]}))
    client = running.client()
    provider.state.fail_next("*", Fault(status=404, body=LEGACY_404))
    with pytest.raises(openai.NotFoundError) as caught:
        await client.completions.create(model="small", prompt="legacy")
    assert "v1/completions endpoint" in caught.value.message  # the provider's own answer
    for model in ("small", "other-alias"):  # chat and Responses, through every alias, are untouched
        completion = await client.chat.completions.create(model=model, messages=MESSAGES)
        assert completion.choices[0].message.content == "echo: ping"
        response = await client.responses.create(model=model, input="ping")
        assert response.output_text == "echo: ping"
    asked = len(provider.received)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.completions.create(model="other-alias", prompt="legacy")
    assert "does not serve this endpoint" in caught.value.message
    assert len(provider.received) == asked  # known: not asked again
    metrics = await _text(running.url, "/metrics")
    assert 'cliproxy_credential_cooldowns_total{provider="fake",reason="no_endpoint"} 1.0' in metrics


async def test_a_404_naming_the_model_still_rests_the_model(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    missing = {"error": {"message": "The model `up-small` does not exist or you do not have access to it.",
                         "type": "invalid_request_error", "param": None, "code": "model_not_found"}}  # fmt: skip
    provider.state.fail_next("*", Fault(status=404, body=missing))
    with pytest.raises(openai.NotFoundError):
        await chat(running)
    with pytest.raises(openai.RateLimitError) as caught:
        await running.client().responses.create(model="small", input="ping")
    assert caught.value.code == "model_cooldown"


async def test_an_ejected_lone_key_is_still_tried_rather_than_refused(provider: FakeProvider, start_proxy) -> None:
    block = compat_block(provider.url, keys=("key-a",))
    running = await start_proxy(base_config(**{"openai-compatibility": [block], "request-retry": 0}))
    provider.state.fail_next("key-a", *[Fault(status=503)] * 3)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            await chat(running)
    assert running.proxy.health.soonest(running.proxy.runtime.routes["small"]) == 0  # ejected, yet not waited for
    completion = await chat(running)  # panic mode: the only key left is tried, and it has recovered
    assert completion.choices[0].message.content == "echo: ping"
    assert len(provider.received) == 4
