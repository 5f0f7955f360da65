"""Named client keys (``client-keys``): model scope in all four client formats, hidden models, expiry."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.cluster import key_slot

from cliproxy_proxy.config import Budget, ConfigError, parse_config
from cliproxy_proxy.counters import budget_key, period, spend_key
from cliproxy_proxy.runtime import build_runtime

from ..support.proxy import CLIENT_KEY, FakeProvider, RunningProxy, base_config, compat_block

SCOPED = "scoped-key-1"
EXPIRED = "expired-key-1"
MODELS = (("up-small", "claude-small"), ("up-large", "gpt-4o"))


def scoped_config(provider: FakeProvider, **client: Any) -> dict[str, Any]:
    entries = [
        {"name": "team-claude", "api-key": SCOPED, "models": ["claude-*"], **client},
        {"name": "gone", "api-key": EXPIRED, "expires": "2020-01-01T00:00:00Z"},
    ]
    return base_config(**{"openai-compatibility": [compat_block(provider.url, models=MODELS)], "client-keys": entries})


async def test_a_key_scoped_to_claude_is_refused_gpt_4o_in_each_client_format(
    provider: FakeProvider, start_proxy
) -> None:
    from google import genai
    from google.genai import errors, types

    running = await start_proxy(scoped_config(provider))
    chat = running.client(key=SCOPED)
    hi: Any = [{"role": "user", "content": "hi"}]
    for call in (lambda: chat.chat.completions.create(model="gpt-4o", messages=hi),
                 lambda: chat.responses.create(model="gpt-4o", input="hi"),
                 lambda: chat.embeddings.create(model="gpt-4o", input="hi"),
                 lambda: chat.completions.create(model="gpt-4o", prompt="hi")):  # fmt: skip
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await call()
        assert denied.value.code == "model_not_allowed"
    claude = anthropic.AsyncAnthropic(base_url=running.url, api_key=SCOPED, max_retries=0)
    for claude_call in (
        lambda: claude.messages.create(model="gpt-4o", max_tokens=5, messages=hi),
        lambda: claude.messages.count_tokens(model="gpt-4o", messages=hi),
    ):
        with pytest.raises(anthropic.PermissionDeniedError) as refused:
            await claude_call()
        assert refused.value.body == {"type": "error", "error": {  # Anthropic's shape, not OpenAI's
            "type": "permission_error", "message": "This API key may not use the model 'gpt-4o'."}}  # fmt: skip
    gemini = genai.Client(api_key=SCOPED, http_options=types.HttpOptions(base_url=running.url))
    for gemini_call in (lambda: gemini.aio.models.generate_content(model="gpt-4o", contents="hi"),
                        lambda: gemini.aio.models.count_tokens(model="gpt-4o", contents="hi")):  # fmt: skip
        with pytest.raises(errors.ClientError) as blocked:
            await gemini_call()
        assert blocked.value.code == 403 and blocked.value.status == "PERMISSION_DENIED"
    with pytest.raises(errors.ClientError) as blocked:
        async for _ in await gemini.aio.models.generate_content_stream(model="gpt-4o", contents="hi"):
            pass
    assert blocked.value.code == 403 and blocked.value.status == "PERMISSION_DENIED"
    assert provider.received == []  # nothing refused reached the upstream

    answer = await chat.chat.completions.create(model="claude-small", messages=hi)
    assert answer.choices[0].message.content
    reply = await claude.messages.create(model="claude-small", max_tokens=5, messages=hi)
    assert reply.content


async def test_models_outside_the_scope_are_hidden_from_every_listing(provider: FakeProvider, start_proxy) -> None:
    from google import genai
    from google.genai import errors, types

    running = await start_proxy(scoped_config(provider))
    assert [m.id async for m in running.client(key=SCOPED).models.list()] == ["claude-small"]
    claude = anthropic.AsyncAnthropic(base_url=running.url, api_key=SCOPED, max_retries=0)
    assert [m.id async for m in claude.models.list()] == ["claude-small"]
    gemini = genai.Client(api_key=SCOPED, http_options=types.HttpOptions(base_url=running.url))
    assert [m.name async for m in await gemini.aio.models.list()] == ["models/claude-small"]
    with pytest.raises(openai.NotFoundError):
        await running.client(key=SCOPED).models.retrieve("gpt-4o")
    with pytest.raises(anthropic.NotFoundError) as unknown:  # as if it did not exist, in Anthropic's shape
        await claude.models.retrieve("gpt-4o")
    assert unknown.value.body["type"] == "error"  # type: ignore[index]
    with pytest.raises(errors.ClientError) as missing:
        await gemini.aio.models.get(model="gpt-4o")
    assert missing.value.code == 404 and missing.value.status == "NOT_FOUND"
    assert (await gemini.aio.models.get(model="claude-small")).name == "models/claude-small"
    everything = [m.id async for m in running.client().models.list()]  # a plain api-keys key: unrestricted
    assert everything == ["claude-small", "gpt-4o"]


async def test_an_expired_key_is_a_401_in_each_client_format_and_a_wrong_one_stays_invalid(
    provider: FakeProvider, start_proxy
) -> None:
    from google import genai
    from google.genai import errors, types

    running = await start_proxy(scoped_config(provider))
    chat = running.client(key=EXPIRED)
    hi: Any = [{"role": "user", "content": "hi"}]
    for call in (chat.models.list,
                 lambda: chat.chat.completions.create(model="claude-small", messages=hi),
                 lambda: chat.responses.create(model="claude-small", input="hi"),
                 lambda: chat.embeddings.create(model="claude-small", input="hi")):  # fmt: skip
        with pytest.raises(openai.AuthenticationError) as expired:
            await call()
        assert expired.value.code == "expired_api_key"
    with pytest.raises(openai.AuthenticationError) as wrong:
        await running.client(key=SCOPED + "x").models.list()
    assert wrong.value.code == "invalid_api_key"
    claude = anthropic.AsyncAnthropic(base_url=running.url, api_key=EXPIRED, max_retries=0)
    for claude_call in (claude.models.list,
                        lambda: claude.messages.create(model="claude-small", max_tokens=5, messages=hi),
                        lambda: claude.messages.count_tokens(model="claude-small", messages=hi)):  # fmt: skip
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await claude_call()
        assert refused.value.body == {"type": "error", "error": {  # Anthropic's shape, listing included
            "type": "authentication_error", "message": "This API key has expired."}}  # fmt: skip
    gemini = genai.Client(api_key=EXPIRED, http_options=types.HttpOptions(base_url=running.url))
    for gemini_call in (gemini.aio.models.list,
                        lambda: gemini.aio.models.generate_content(model="claude-small", contents="hi"),
                        lambda: gemini.aio.models.count_tokens(model="claude-small", contents="hi")):  # fmt: skip
        with pytest.raises(errors.ClientError) as blocked:
            await gemini_call()
        assert blocked.value.code == 401 and blocked.value.status == "UNAUTHENTICATED"
    assert provider.received == []


async def test_a_client_key_read_from_its_file(provider: FakeProvider, start_proxy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "team.key").write_text("from-a-file-1\n")
    team = {"name": "team", "api-key-file": "team.key", "models": ["gpt-*"]}
    config = base_config(**{"openai-compatibility": [compat_block(provider.url, models=MODELS)], "client-keys": [team]})
    running = await start_proxy(config)
    assert [m.id async for m in running.client(key="from-a-file-1").models.list()] == ["gpt-4o"]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"name": "a", "api-key": "k1"}, {"name": "a", "api-key": "k2"}], "client names must be unique: a"),
        ([{"name": "a", "api-key": "k1", "expires": "2027-01-01T00:00:00"}], "must name its time zone"),
        ([{"name": "a"}], "exactly one of api-key or api-key-file"),
        ([{"name": "a b", "api-key": "k1"}], "client-keys[0].name"),
        ([{"name": "a", "api-key": "k1", "rate-limit": {"rpm": 0}}], "client-keys[0].rate-limit.rpm"),
        ([{"name": "a", "api-key": "k1", "budget": {"tokens": 5, "per": "week"}}], "client-keys[0].budget.per"),
    ],
)
def test_bad_client_keys_are_refused_with_their_path(entries: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"client-keys": entries})
    assert message in str(refused.value)
    assert "k1" not in str(refused.value) and "k2" not in str(refused.value)


#: Names that would break something downstream: a Redis hash tag (a Cluster slot), a metric label, a JSON log line.
HOSTILE_NAMES = ["a}b", "{a}", 'a"b', "a\nb", "a\\b", "a b", "-a", ".a", "x" * 128, "tëam", "\uff54eam", "team\u202e",
                 "a\u0661", ""]  # fmt: skip


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_client_name_is_refused_at_load_by_its_path(name: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"client-keys": [{"name": name, "api-key": "k1"}]})
    assert str(refused.value).startswith("client-keys[0].name: ") and "k1" not in str(refused.value)
    assert name not in str(refused.value) or len(name) < 2  # the offending text is not echoed into the log


async def test_the_widest_allowed_name_reads_the_same_in_redis_metrics_the_request_log_and_the_clients_endpoint(
    provider: FakeProvider, start_proxy, tmp_path: Path
) -> None:
    name = "Team-A.app_1-" + "x" * 114  # every character class the rule allows, at the 127 limit
    log = tmp_path / "requests.jsonl"
    team = {"name": name, "api-key": SCOPED, "budget": {"tokens": 10**6, "per": "day"}}
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url, models=MODELS)],
                                               "client-keys": [team], "request-log": {"enabled": True,
                                                                                      "path": str(log)}}))  # fmt: skip
    chat = running.client(key=SCOPED)
    await chat.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])

    current = period(Budget(tokens=1, per="day"), time.time())[0]
    for key in (budget_key(name, current), spend_key(name, current)):  # the whole name is the hash tag: one slot
        assert key.split("{", 1)[1].split("}", 1)[0] == name and key_slot(key.encode()) == key_slot(name.encode())
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{running.url}/metrics") as scraped:
            families = {f.name: f for f in text_string_to_metric_families(await scraped.text())}
        headers = {"Authorization": f"Bearer {SCOPED}"}
        async with session.get(f"{running.url}/v1/metrics/clients", headers=headers) as clients:
            assert list(await clients.json()) == [name]
    labels = [s.labels for s in families["cliproxy_client_requests"].samples if s.name.endswith("_total")]
    assert {"client": name, "status": "200"} in labels
    await running.proxy.accounting.request_log.drain()
    [line] = [orjson.loads(text) for text in log.read_text().splitlines()]
    assert line["client"] == name


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"client-keys": [{"name": "a", "api-key": "  "}]}, r"client-keys\[0\]: the key is empty"),
        ({"api-keys": ["k1"], "client-keys": [{"name": "a", "api-key": "k1"}]}, r"client-keys\[0\]: the key is also"),
        ({"client-keys": [{"name": "a", "api-key": "k1"}, {"name": "b", "api-key": "k1"}]}, r"client-keys\[1\]"),
    ],
)
def test_an_empty_or_shared_client_key_is_refused(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        build_runtime(parse_config(document), None)
    assert "k1" not in str(refused.value)


async def test_usage_is_counted_per_client_name_and_never_shows_the_key(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(scoped_config(provider))
    chat = running.client(key=SCOPED)
    for _ in range(2):
        await chat.chat.completions.create(model="claude-small", messages=[{"role": "user", "content": "hi there"}])
    with pytest.raises(openai.PermissionDeniedError):
        await chat.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    await running.client().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    registry = running.proxy.metrics.registry

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"client": "team-claude", **labels})

    assert sample("cliproxy_client_requests_total", status="200") == 2
    assert sample("cliproxy_client_requests_total", status="403") == 1
    tokens_in = sample("cliproxy_client_tokens_total", direction="input")
    tokens_out = sample("cliproxy_client_tokens_total", direction="output")
    assert tokens_in is not None and tokens_in > 0 and tokens_out is not None and tokens_out > 0
    async with aiohttp.ClientSession() as session, session.get(f"{running.url}/metrics") as scraped:
        text = await scraped.text()
    assert 'client="team-claude"' in text and SCOPED not in text and CLIENT_KEY not in text
    series = [line for line in text.splitlines() if line.startswith("cliproxy_client_requests_total{")]
    assert len(series) == 3  # the plain api-keys key is shown by its place in the config, never by itself
    assert 'cliproxy_client_requests_total{client="api-keys[0]",status="200"} 1.0' in series


async def own_usage(running: RunningProxy, key: str) -> dict[str, Any]:
    """What ``/v1/metrics/clients`` shows the named key ``key`` of itself."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{running.url}/v1/metrics/clients", headers={"Authorization": f"Bearer {key}"}) as got,
    ):
        [mine] = (await got.json()).values()
        return dict(mine)


async def test_token_counting_is_scoped_but_outside_the_limits_and_counted_apart(
    provider: FakeProvider, start_proxy
) -> None:
    claude_block = {
        "api-key": "key-a",
        "base-url": provider.url.removesuffix("/v1"),
        "models": [{"name": "up-small", "alias": "claude-small"}, {"name": "up-large", "alias": "gpt-4o"}],
    }
    team = {"name": "team", "api-key": SCOPED, "models": ["claude-*"], "rate-limit": {"rpm": 1},
            "budget": {"tokens": 10**6, "per": "day"}}  # fmt: skip
    running = await start_proxy(base_config(**{"claude-api-key": [claude_block], "client-keys": [team]}))
    claude = anthropic.AsyncAnthropic(base_url=running.url, api_key=SCOPED, max_retries=0)
    hi: Any = [{"role": "user", "content": "a b c"}]
    for _ in range(3):  # an rpm of 1 does not hold counting back...
        assert (await claude.messages.count_tokens(model="claude-small", messages=hi)).input_tokens > 0
    with pytest.raises(anthropic.PermissionDeniedError):  # ...the scope does
        await claude.messages.count_tokens(model="gpt-4o", messages=hi)
    await claude.messages.create(model="claude-small", max_tokens=5, messages=hi)  # the counts spent no rpm
    with pytest.raises(anthropic.RateLimitError):
        await claude.messages.create(model="claude-small", max_tokens=5, messages=hi)
    assert (await claude.messages.count_tokens(model="claude-small", messages=hi)).input_tokens > 0  # rpm spent

    registry = running.proxy.metrics.registry
    counts = {
        status: registry.get_sample_value(
            "cliproxy_client_count_tokens_requests_total", {"client": "team", "status": status}
        )
        for status in ("200", "403")
    }
    requests = {
        status: registry.get_sample_value("cliproxy_client_requests_total", {"client": "team", "status": status})
        for status in ("200", "429")
    }
    assert (counts, requests) == ({"200": 4.0, "403": 1.0}, {"200": 1.0, "429": 1.0})
    mine = await own_usage(running, SCOPED)
    assert (mine["request_count"], mine["count_tokens_requests"]) == (2, 5)
    answered = mine["input_tokens"] + mine["output_tokens"]  # the budget counts the answer's tokens, no count's
    for _ in range(250):  # settled in the background
        spent = (await own_usage(running, SCOPED))["budget"]["spent_tokens"]
        if spent:
            break
        await asyncio.sleep(0.02)
    assert spent == answered > 0


async def test_a_thinking_suffix_is_judged_on_the_model_it_routes_to(provider: FakeProvider, start_proxy) -> None:
    models = (("up-small", "claude-small"), ("up-large", "claude-small(high)"))  # a literal alias with parentheses
    entries = [{"name": "team", "api-key": SCOPED, "models": ["claude-small"]}]
    running = await start_proxy(
        base_config(**{"openai-compatibility": [compat_block(provider.url, models=models)], "client-keys": entries})
    )
    chat = running.client(key=SCOPED)
    with pytest.raises(openai.PermissionDeniedError):  # routes to the alias, which the glob does not name
        await chat.chat.completions.create(model="claude-small(high)", messages=[{"role": "user", "content": "hi"}])
    await chat.chat.completions.create(model="claude-small(low)", messages=[{"role": "user", "content": "hi"}])
    assert [r.body["model"] for r in provider.received] == ["up-small"]
