"""The proxy end to end with the official openai SDK: models, chat and completions, streaming, client auth."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import openai
import pytest
from aiohttp.test_utils import make_mocked_request

from cliproxy_proxy import discovery
from cliproxy_proxy.app import _is_loopback, auth_middleware
from cliproxy_proxy.clients import key_index

from ..support.proxy import CLIENT_KEY, FakeProvider, base_config, compat_block, eventually


async def test_models_list_prefix_alias_and_exclusion(provider: FakeProvider, start_proxy) -> None:
    block = compat_block(provider.url, models=[("up-small", "small"), ("up-large", None), ("up-preview", None)],
                         prefix="team", **{"excluded-models": ["*-preview"]})  # fmt: skip
    running = await start_proxy(base_config(**{"openai-compatibility": [block]}))
    ids = sorted([m.id async for m in running.client().models.list()])
    assert ids == ["small", "team/small", "team/up-large", "up-large"]
    model = await running.client().models.retrieve("team/small")
    assert model.owned_by == "fake"


async def test_force_model_prefix_rejects_bare_names(provider: FakeProvider, start_proxy) -> None:
    block = compat_block(provider.url, prefix="prod")
    running = await start_proxy(base_config(**{"force-model-prefix": True, "openai-compatibility": [block]}))
    assert [m.id async for m in running.client().models.list()] == ["prod/small"]
    with pytest.raises(openai.NotFoundError) as caught:
        await running.client().chat.completions.create(model="small", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "model_not_found"
    assert "prod/small" in caught.value.message
    assert provider.received == []


async def test_chat_completion_rewrites_alias_both_ways(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url, prefix="p")]}))
    raw = await running.client().chat.completions.with_raw_response.create(
        model="p/small", messages=[{"role": "user", "content": "hello proxy"}], temperature=0.2
    )
    completion = raw.parse()
    assert completion.model == "p/small"
    assert completion.choices[0].message.content == "echo: hello proxy"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    seen = provider.received[-1]
    assert seen.body["model"] == "up-small"
    assert seen.body["temperature"] == 0.2
    assert seen.headers["Authorization"] == "Bearer key-a"
    assert CLIENT_KEY not in str(seen.headers)
    assert float(raw.headers["X-Cliproxy-Overhead-Ms"]) >= 0


async def test_body_passes_through_untouched_when_no_rewrite_is_needed(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(
        base_config(**{"openai-compatibility": [compat_block(provider.url, models=[("up-small", None)])]})
    )
    raw_body = b'{"model":"up-small","messages":[{"role":"user","content":"x"}],"vendor_extension":{"keep":[1,2]}}'
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{running.url}/v1/chat/completions", data=raw_body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}
        ) as response,
    ):
        assert response.status == 200
    assert provider.received[-1].body["vendor_extension"] == {"keep": [1, 2]}


async def test_streaming_chunks_arrive_with_the_alias(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    stream = await running.client().chat.completions.create(
        model="small", messages=[{"role": "user", "content": "one two three four"}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: one two three four"
    assert {c.model for c in chunks} == {"small"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert provider.received[-1].body["stream"] is True
    providers = await _provider_metrics(running.url)
    assert providers["fake"]["total_tokens"] == chunks[-1].usage.total_tokens


async def test_stream_headers_stop_intermediaries_buffering(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{running.url}/v1/chat/completions",
            json={"model": "small", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        ) as response,
    ):
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["X-Accel-Buffering"] == "no"
        assert "no-cache" in response.headers["Cache-Control"]
        body = await response.read()
    assert body.endswith(b"data: [DONE]\n\n")


async def test_sync_client_streaming_and_not(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))

    def call() -> tuple[str, str]:
        client = running.sync_client()
        messages = [{"role": "user", "content": "sync works"}]
        plain = client.chat.completions.create(model="small", messages=messages)  # type: ignore[arg-type]
        streamed = client.chat.completions.create(model="small", messages=messages, stream=True)  # type: ignore[arg-type]
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        return plain.choices[0].message.content or "", text

    assert await asyncio.to_thread(call) == ("echo: sync works", "echo: sync works")


async def test_legacy_completions(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    completion = await running.client().completions.create(model="small", prompt="say this")
    assert completion.model == "small"
    assert completion.choices[0].text == "echo: say this"
    assert provider.received[-1].path == "/v1/completions"


async def test_dedicated_block_routes_with_its_own_key(provider: FakeProvider, start_proxy) -> None:
    config = base_config(groq=[{"api-key": "key-b", "base-url": provider.url, "models": [{"name": "up-large"}]}])
    running = await start_proxy(config)
    completion = await running.client().chat.completions.create(
        model="up-large", messages=[{"role": "user", "content": "x"}]
    )
    assert completion.choices[0].message.content == "echo: x"
    assert provider.received[-1].headers["Authorization"] == "Bearer key-b"


async def test_models_are_discovered_when_not_listed(provider: FakeProvider, start_proxy) -> None:
    block = compat_block(provider.url, models=None, prefix="d", **{"excluded-models": ["other-*", "*preview"]})
    running = await start_proxy(base_config(**{"openai-compatibility": [block]}))
    ids = {m.id async for m in running.client().models.list()}
    assert ids == {"d/up-small", "d/up-large", "up-small", "up-large"}


async def test_failed_discovery_is_retried_with_backoff_and_counted(
    provider: FakeProvider, start_proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 401 (or an upstream down) at start must not leave the models missing until the 10-minute refresh."""
    monkeypatch.setattr(discovery, "RETRY_BASE", 0.2)
    block = compat_block(provider.url, keys=("key-late",), models=None, prefix="d")
    running = await start_proxy(base_config(**{"openai-compatibility": [block]}))
    client = running.client()
    assert [m.id async for m in client.models.list()] == []
    metrics = await _scrape(running)
    assert 'cliproxy_model_discovery_pending{provider="fake"} 1.0' in metrics
    assert 'cliproxy_model_discovery_total{provider="fake",result="failure"}' in metrics
    generation = running.proxy.generation
    await asyncio.sleep(0.7)  # retries at 0.2 s and 0.4 s fail again: nothing changes, nothing is re-applied
    assert running.proxy.generation == generation
    failed = re.search(
        r'cliproxy_model_discovery_total\{provider="fake",result="failure"\} (\d+)', await _scrape(running)
    )
    assert failed and 2 <= int(failed.group(1)) <= 4, "retried, backing off (0.2 s, 0.4 s), not every reload tick"

    provider.state.keys = provider.state.keys | {"key-late"}  # the upstream accepts the key now
    await eventually(lambda: "d/up-small" in running.proxy.runtime.routes, within=10)
    assert {m.id async for m in client.models.list()} >= {"d/up-small", "up-large"}
    reply = await client.chat.completions.create(model="d/up-small", messages=[{"role": "user", "content": "x"}])
    assert reply.choices[0].message.content == "echo: x"
    metrics = await _scrape(running)
    assert 'cliproxy_model_discovery_pending{provider="fake"} 0.0' in metrics
    assert 'cliproxy_model_discovery_total{provider="fake",result="success"} 1.0' in metrics


async def _scrape(running) -> str:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as session, session.get(f"{running.url}/metrics") as response:
        return await response.text()


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": f"Bearer {CLIENT_KEY}"}, {"X-Api-Key": CLIENT_KEY}, {"X-Goog-Api-Key": CLIENT_KEY}],
)
async def test_client_key_sources(provider: FakeProvider, start_proxy, headers: dict[str, str]) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{running.url}/v1/models", headers=headers) as response:
            assert response.status == 200
        async with session.get(f"{running.url}/v1/models?key={CLIENT_KEY}") as response:
            assert response.status == 200


async def test_wrong_and_missing_keys_get_401(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    with pytest.raises(openai.AuthenticationError) as caught:
        await running.client(key="wrong").models.list()
    assert caught.value.code == "invalid_api_key"
    async with aiohttp.ClientSession() as session, session.get(f"{running.url}/v1/models") as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "missing_api_key"


def test_key_comparison_checks_every_key() -> None:
    keys = (b"alpha", b"beta")
    assert key_index(b"beta", keys) == 1
    assert key_index(b"bet", keys) == -1
    assert key_index(b"", ()) == -1


async def test_no_api_keys_serves_loopback_only() -> None:
    from cliproxy_proxy.app import PROXY
    from cliproxy_proxy.config import parse_config
    from cliproxy_proxy.runtime import build_runtime
    from cliproxy_proxy.state import Proxy

    async def handler(request: object) -> object:
        return "served"

    for allow, remote, expected in ((False, "10.1.2.3", 403), (False, "127.0.0.1", None), (True, "10.1.2.3", None)):
        runtime = build_runtime(parse_config({"allow-unauthenticated": allow}), None)
        request = make_mocked_request("GET", "/v1/models", app=_app_with(PROXY, Proxy(runtime)))
        request = request.clone(remote=remote)
        result = await auth_middleware(request, handler)  # type: ignore[arg-type]
        if expected is None:
            assert result == "served"
        else:
            assert result.status == expected  # type: ignore[attr-defined]
    assert _is_loopback("::1") and not _is_loopback(None) and not _is_loopback("not-an-ip")


def _app_with(key, value):  # type: ignore[no-untyped-def]
    from aiohttp import web

    app = web.Application()
    app[key] = value
    return app


async def _provider_metrics(url: str) -> dict:  # type: ignore[type-arg]
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/v1/metrics/providers", headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as response,
    ):
        assert response.status == 200
        return await response.json()  # type: ignore[no-any-return]
