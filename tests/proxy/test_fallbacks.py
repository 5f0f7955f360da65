"""Fallbacks across models and per-credential weights, through the proxy with the openai SDK and the fake upstream.

The fake serves two models; ``small`` is served through key-a and ``large`` through key-b, so which key the fake
saw says which model answered.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cliproxy_proxy.config import ConfigError, parse_config
from cliproxy_proxy.demo_upstream import Fault
from cliproxy_proxy.forward import FALLBACK_HEADER
from cliproxy_proxy.health import Health
from cliproxy_proxy.runtime import build_runtime

from ..fakes.anthropic_upstream import DEFAULT_KEY as ANTHROPIC_KEY
from ..fakes.anthropic_upstream import Fault as AnthropicFault
from ..fakes.anthropic_upstream import start_anthropic
from ..support.proxy import CLIENT_KEY, FakeProvider, base_config, compat_block

MESSAGES = [{"role": "user", "content": "ping"}]
TOO_LONG = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens. However, your messages "
        "resulted in 9000 tokens.",
        "type": "invalid_request_error",
        "code": "context_length_exceeded",
    }
}
SCOPED = "sk-scoped-to-small"


def two_models(provider: FakeProvider, fallbacks: dict[str, list[str]], **extra: Any) -> dict[str, Any]:
    blocks = [compat_block(provider.url, keys=("key-a",), models=(("up-small", "small"),), name="a"),
              compat_block(provider.url, keys=("key-b",), models=(("up-large", "large"),), name="b")]  # fmt: skip
    return base_config(**{"openai-compatibility": blocks, "fallbacks": fallbacks, "request-retry": 0}, **extra)


def claude_falls_back_to_large(provider: FakeProvider, claude_url: str) -> dict[str, Any]:
    """The two models, and ``claude`` on the fake Anthropic upstream falling back to ``large``."""
    claude = {"api-key": ANTHROPIC_KEY, "base-url": claude_url,
              "models": [{"name": "claude-sonnet-4-6", "alias": "claude"}]}  # fmt: skip
    return two_models(provider, {"claude": ["large"]}, **{"claude-api-key": [claude]})


def fallbacks_taken(running: Any, source: str, target: str, reason: str) -> float:
    sample = running.proxy.metrics.registry.get_sample_value(
        "cliproxy_fallbacks_total", {"from_model": source, "to_model": target, "reason": reason}
    )
    return sample or 0.0


@pytest.mark.parametrize(("fault", "reason"), [
    (Fault(status=429, headers={"Retry-After": "30"}), "quota"),
    (Fault(status=400, body=TOO_LONG), "context_window"),
    (Fault(status=503), "transient"),
])  # fmt: skip
async def test_a_failing_model_falls_back_and_says_so(provider: FakeProvider, start_proxy, fault: Fault,
                                                      reason: str) -> None:  # fmt: skip
    running = await start_proxy(two_models(provider, {"small": ["large"]}))
    provider.state.fail_next("key-a", fault)
    async with running.client() as client:
        raw = await client.chat.completions.with_raw_response.create(model="small", messages=MESSAGES)
    answer = raw.parse()
    assert [r.key for r in provider.received] == ["key-a", "key-b"]
    assert answer.model == "large"  # what answered, not what was asked for
    assert raw.headers[FALLBACK_HEADER] == "small"
    assert fallbacks_taken(running, "small", "large", reason) == 1


async def test_a_resting_model_falls_back_at_once(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(two_models(provider, {"small": ["large"]}))
    provider.state.fail_next("key-a", Fault(status=429, headers={"Retry-After": "30"}))
    async with running.client() as client:
        for _ in range(2):
            await client.chat.completions.create(model="small", messages=MESSAGES)
    assert [r.key for r in provider.received] == ["key-a", "key-b", "key-b"]  # key-a rests: not asked again
    assert fallbacks_taken(running, "small", "large", "cooldown") == 1


async def test_a_context_window_refusal_falls_back_across_wires(provider: FakeProvider, start_proxy,
                                                                aiohttp_server) -> None:  # fmt: skip
    """Anthropic's own refusal, read by its codec, hands a Claude client's request to an OpenAI-shaped model."""
    claude, claude_url = await start_anthropic(aiohttp_server)
    running = await start_proxy(claude_falls_back_to_large(provider, claude_url))
    claude.fail_next(AnthropicFault(status=400, message="prompt is too long: 210000 tokens > 200000 maximum"))
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=CLIENT_KEY, max_retries=0, timeout=60.0)
    raw = await client.messages.with_raw_response.create(model="claude", max_tokens=64, messages=MESSAGES)
    answer = await raw.parse()
    assert answer.model == "large" and answer.content[0].type == "text" and answer.content[0].text
    assert raw.headers[FALLBACK_HEADER] == "claude"
    assert len(claude.received) == 1 and [r.key for r in provider.received] == ["key-b"]
    assert fallbacks_taken(running, "claude", "large", "context_window") == 1


async def test_a_streamed_request_falls_back_before_its_first_byte(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(two_models(provider, {"small": ["large"]}))
    provider.state.fail_next("key-a", Fault(status=429))
    async with running.client() as client:
        stream = await client.chat.completions.create(model="small", messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]
    assert {chunk.model for chunk in chunks} == {"large"} and chunks[-1].choices[0].finish_reason == "stop"


async def test_the_requests_own_fault_takes_no_fallback(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(two_models(provider, {"small": ["large"]}))
    invalid = {"error": {"message": "messages: field required", "type": "invalid_request_error"}}
    provider.state.fail_next("key-a", Fault(status=400, body=invalid))
    async with running.client() as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="small", messages=MESSAGES)
    assert refused.value.body == invalid["error"]  # the provider's own error, passed through as before
    assert [r.key for r in provider.received] == ["key-a"]


async def test_without_a_fallback_a_context_window_refusal_reaches_the_client(provider: FakeProvider,
                                                                              start_proxy) -> None:  # fmt: skip
    running = await start_proxy(two_models(provider, {}))
    provider.state.fail_next("key-a", Fault(status=400, body=TOO_LONG))
    async with running.client() as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="small", messages=MESSAGES)
    assert refused.value.code == "context_length_exceeded"
    assert [r.key for r in provider.received] == ["key-a"]  # the same model's other credentials are not asked
    assert not running.proxy.health.cooldowns  # nor is the credential rested for the request's length


async def test_fallbacks_that_name_each_other_try_each_model_once(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(two_models(provider, {"small": ["large"], "large": ["small"]}))
    provider.state.fail_next("*", *[Fault(status=503)] * 4)
    async with running.client() as client:
        with pytest.raises(openai.InternalServerError) as failed:
            await client.chat.completions.create(model="small", messages=MESSAGES)
    assert failed.value.status_code == 503
    assert [r.key for r in provider.received] == ["key-a", "key-b"]


async def test_a_scoped_client_key_reaches_no_fallback_outside_its_scope(provider: FakeProvider,
                                                                          start_proxy) -> None:  # fmt: skip
    clients = [{"name": "team", "api-key": SCOPED, "models": ["small"]}]
    running = await start_proxy(two_models(provider, {"small": ["large"]}, **{"client-keys": clients}))
    provider.state.fail_next("key-a", Fault(status=503))
    async with running.client(SCOPED) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="small", messages=MESSAGES)
    assert [r.key for r in provider.received] == ["key-a"]


def test_fallback_chains_are_breadth_first_deduplicated_and_bounded() -> None:
    def block(name: str, *models: str) -> dict[str, Any]:
        return compat_block("http://127.0.0.1:1/v1", keys=(f"key-{name}",), models=[(m, None) for m in models],
                            name=name)  # fmt: skip

    fallbacks = {"a": ["b", "c"], "b": ["d", "a"], "c": ["e", "f"], "d": ["a"], "x": ["missing"]}
    config = parse_config(base_config(**{"openai-compatibility": [block("one", *"abcdef"), block("two", "x")]},
                                      fallbacks=fallbacks))  # fmt: skip
    chains = build_runtime(config, None).fallbacks
    assert [r.model for r in chains["a"]] == ["b", "c", "d", "e"]  # its own, then theirs; never itself; four at most
    assert [r.model for r in chains["d"]] == ["a", "b", "c", "e"]
    assert "x" not in chains  # a fallback no route serves is skipped


@pytest.mark.parametrize(("fallbacks", "where"), [
    ({"m": ["m"]}, "itself"),
    ({"m": ["n", "n"]}, "twice"),
    ({"m": ["a", "b", "c", "d", "e"]}, "fallbacks.m"),
    ({"m": []}, None),
])  # fmt: skip
def test_bad_fallbacks_are_config_errors(fallbacks: dict[str, list[str]], where: str | None) -> None:
    if where is None:
        parse_config(base_config(fallbacks=fallbacks))  # an empty list: nothing to fall back to, harmless
        return
    with pytest.raises(ConfigError, match=where):
        parse_config(base_config(fallbacks=fallbacks))


async def test_weights_share_picks_smoothly_and_zero_is_a_standby(provider: FakeProvider, start_proxy) -> None:
    block = compat_block(provider.url, keys=("key-a", "key-b", "key-c"))
    block["api-key-entries"][0]["weight"] = 3
    block["api-key-entries"][2]["weight"] = 0
    running = await start_proxy(base_config(**{"openai-compatibility": [block]}))
    async with running.client() as client:
        for _ in range(8):
            await client.chat.completions.create(model="small", messages=MESSAGES)
        assert [r.key for r in provider.received] == ["key-a", "key-a", "key-b", "key-a"] * 2  # 3:1, interleaved
        provider.state.fail_next("key-a", Fault(status=429, headers={"Retry-After": "60"}))
        provider.state.fail_next("key-b", Fault(status=429, headers={"Retry-After": "60"}))
        await client.chat.completions.create(model="small", messages=MESSAGES)  # both weighted ones now rest
    assert [r.key for r in provider.received][8:] == ["key-a", "key-b", "key-c"]
    entry = "openai-compatibility[0].api-key-entries[{}]"
    picks = {key: running.proxy.metrics.registry.get_sample_value(
        "cliproxy_credential_selections_total", {"provider": "fake", "credential": entry.format(n)}
    ) for n, key in enumerate("abc")}  # fmt: skip
    assert picks == {"a": 7, "b": 3, "c": 1}


def test_a_weight_is_a_bounded_integer() -> None:
    block = compat_block("http://127.0.0.1:1/v1")
    block["api-key-entries"][0]["weight"] = -1
    with pytest.raises(ConfigError, match="weight"):
        parse_config(base_config(**{"openai-compatibility": [block]}))


@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.integers(0, 6), min_size=1, max_size=5), rounds=st.integers(1, 3))
def test_every_window_of_total_weight_picks_gives_each_credential_its_weight(weights: list[int], rounds: int) -> None:
    """Smooth weighted round-robin's promise, for any weights: shares exact per window, standbys never picked."""
    block = compat_block("http://127.0.0.1:1/v1", keys=tuple(f"key-{n}" for n in range(len(weights))))
    for entry, weight in zip(block["api-key-entries"], weights, strict=True):
        entry["weight"] = weight
    route = build_runtime(parse_config(base_config(**{"openai-compatibility": [block]})), None).routes["small"]
    health = Health()
    total = sum(weights) or len(weights)  # all standbys: they share like weight 1
    for _ in range(rounds):
        picks = [health.pick(route, "round-robin", set()) for _ in range(total)]
        shares = [sum(1 for p in picks if p is target) for target in route.targets]
        assert shares == (weights if sum(weights) else [1] * len(weights))


async def test_a_stream_a_keepalive_opened_names_its_fallback_model_in_every_chunk(provider: FakeProvider,
                                                                                  start_proxy) -> None:  # fmt: skip
    """A keepalive sends the head before a fallback is known, so the header cannot follow; each chunk's ``model``
    (what the SDKs show) names the model that answered, as it does in every answer."""
    running = await start_proxy(two_models(provider, {"small": ["large"]}, streaming={"keepalive-seconds": 0.05}))
    provider.state.fail_next("key-a", Fault(status=503, delay=1.0))  # keepalives go out while key-a is asked
    async with running.client() as client:
        raw = await client.chat.completions.with_raw_response.create(model="small", messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in raw.parse()]
    assert FALLBACK_HEADER not in raw.headers
    assert {chunk.model for chunk in chunks} == {"large"} and chunks[-1].choices[0].finish_reason == "stop"
    assert fallbacks_taken(running, "small", "large", "transient") == 1


@pytest.mark.parametrize("fault", [Fault(status=503), Fault(status=429, headers={"Retry-After": "30"})])
async def test_embeddings_fall_back_and_say_so(provider: FakeProvider, start_proxy, fault: Fault) -> None:
    running = await start_proxy(two_models(provider, {"small": ["large"]}))
    provider.state.fail_next("key-a", fault)
    async with running.client() as client:
        raw = await client.embeddings.with_raw_response.create(model="small", input="x", encoding_format="float")
    answer = raw.parse()
    assert answer.model == "large" and len(answer.data) == 1
    assert raw.headers[FALLBACK_HEADER] == "small"
    assert [(r.key, r.path, r.body["model"]) for r in provider.received] == [
        ("key-a", "/v1/embeddings", "up-small"), ("key-b", "/v1/embeddings", "up-large")]  # fmt: skip


async def test_embeddings_fall_back_from_a_model_whose_providers_do_not_embed(provider: FakeProvider, start_proxy,
                                                                              aiohttp_server) -> None:  # fmt: skip
    claude, claude_url = await start_anthropic(aiohttp_server)
    running = await start_proxy(claude_falls_back_to_large(provider, claude_url))
    async with running.client() as client:
        answer = await client.embeddings.create(model="claude", input="x", encoding_format="float")
    assert answer.model == "large" and claude.received == [] and [r.key for r in provider.received] == ["key-b"]


async def test_an_embeddings_requests_own_fault_takes_no_fallback(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(two_models(provider, {"small": ["large"]}))
    invalid = {"error": {"message": "input: too many tokens", "type": "invalid_request_error"}}
    provider.state.fail_next("key-a", Fault(status=400, body=invalid))
    async with running.client() as client:
        with pytest.raises(openai.BadRequestError, match="too many tokens"):
            await client.embeddings.create(model="small", input="x", encoding_format="float")
    assert [r.key for r in provider.received] == ["key-a"]
