"""Bad client input gets OpenAI-shaped errors; metrics carry bounded labels and no secrets."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from ..support.proxy import CLIENT_KEY, FakeProvider, base_config, compat_block, eventually

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


async def post(url: str, data: bytes, path: str = "/v1/chat/completions") -> tuple[int, dict]:  # type: ignore[type-arg]
    async with aiohttp.ClientSession() as session, session.post(url + path, data=data, headers=AUTH) as response:
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b'{"messages": []}', 400, "missing_model"),
        (b'{"model": 42, "messages": []}', 400, "missing_model"),
        (b'{"model": "no-such-model", "messages": []}', 404, "model_not_found"),
    ],
)
async def test_bad_requests(provider: FakeProvider, start_proxy, body: bytes, status: int, code: str) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    got_status, document = await post(running.url, body)
    assert got_status == status
    assert document["error"]["code"] == code
    assert set(document["error"]) >= {"message", "type", "code"}
    assert provider.received == []


async def test_oversize_body_is_413(provider: FakeProvider, start_proxy) -> None:
    config = base_config(**{"openai-compatibility": [compat_block(provider.url)], "max-body-bytes": 1024})
    running = await start_proxy(config)
    with pytest.raises(openai.APIStatusError) as caught:
        await running.client().chat.completions.create(
            model="small", messages=[{"role": "user", "content": "x" * 4096}]
        )
    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"


async def test_body_limit_follows_a_reload(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    big = [{"role": "user", "content": "x" * 4096}]
    await running.client().chat.completions.create(model="small", messages=big)
    running.rewrite(base_config(**{"openai-compatibility": [compat_block(provider.url)], "max-body-bytes": 1024}))
    await eventually(lambda: running.proxy.generation == 2)
    with pytest.raises(openai.APIStatusError) as caught:
        await running.client().chat.completions.create(model="small", messages=big)
    assert (caught.value.status_code, caught.value.code) == (413, "request_too_large")


async def test_unknown_path_and_method_are_json(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{running.url}/v1/nothing-here", headers=AUTH) as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "unknown_path"
        async with session.get(f"{running.url}/v1/chat/completions", headers=AUTH) as response:
            assert response.status == 405
            assert (await response.json())["error"]["code"] == "method_not_allowed"
        async with session.post(f"{running.url}/v1beta/models/small:embedContent", headers=AUTH, json={}) as response:
            assert response.status == 404
            assert (await response.json())["error"]["status"] == "NOT_FOUND"  # in Google's shape


async def test_health_readiness_and_index(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/health"):
            async with session.get(running.url + path) as response:
                assert (response.status, await response.json()) == (200, {"status": "ok"})
        async with session.get(running.url + "/readyz") as response:
            assert response.status == 200
            assert (await response.json())["models"] == 1
        running.proxy.draining = True
        async with session.get(running.url + "/readyz") as response:
            assert response.status == 503


async def test_prometheus_series_and_provider_summary(provider: FakeProvider, start_proxy) -> None:
    config = base_config(**{"openai-compatibility": [compat_block(provider.url, keys=("key-a", "key-b"))]})
    running = await start_proxy(config)
    client = running.client()
    for _ in range(3):
        await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "count me"}])
    stream = await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "s"}],
                                                  stream=True, stream_options={"include_usage": True})  # fmt: skip
    async for _ in stream:
        pass
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="made-up/unbounded-name", messages=[])
    async with aiohttp.ClientSession() as session:
        async with session.get(running.url + "/metrics") as response:
            text = await response.text()
        async with session.get(running.url + "/v1/metrics/providers", headers=AUTH) as response:
            summary = (await response.json())["fake"]
    assert 'cliproxy_requests_total{model="small",provider="fake",status="200"} 4.0' in text
    assert 'cliproxy_requests_total{model="none",provider="none",status="404"} 1.0' in text
    assert "unbounded-name" not in text
    assert 'cliproxy_tokens_total{model="small",provider="fake",type="input"}' in text
    assert (
        'cliproxy_tokens_total{model="small",provider="fake",type="output"} 11.0' in text
    )  # 3 x "echo: count me" + "echo: s"
    assert 'cliproxy_request_duration_seconds_count{provider="fake"} 4.0' in text
    assert 'cliproxy_time_to_first_token_seconds_count{provider="fake"} 1.0' in text
    assert 'cliproxy_proxy_overhead_seconds_count{provider="fake"}' in text
    assert 'cliproxy_in_flight_requests{provider="fake"} 0.0' in text
    assert "cliproxy_config_generation 1.0" in text
    assert 'cliproxy_credentials{provider="fake",state="healthy"} 2.0' in text
    for secret in ("key-a", "key-b", CLIENT_KEY):
        assert secret not in text
    assert summary["request_count"] == 4 and summary["success_count"] == 4 and summary["failure_count"] == 0
    assert summary["success_rate"] == 1.0
    assert summary["total_tokens"] > 0
    assert 0 < summary["latency_p50_ms"] <= summary["latency_p95_ms"]
    assert (summary["in_flight"], summary["credentials_healthy"], summary["credentials_cooling"]) == (0, 2, 0)


async def test_provider_summary_needs_a_client_key(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    url = running.url + "/v1/metrics/providers"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 401
        async with session.get(url, headers=AUTH) as response:
            assert response.status == 200
            assert (await response.json())["fake"]["request_count"] == 0
