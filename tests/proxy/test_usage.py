"""Usage, cost and spend: cached tokens from every wire, prices (genai-prices and overrides), per-client series and
``/v1/metrics/clients``, USD budgets in both engines, and the request log."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from genai_prices import Usage as TableUsage
from genai_prices import calc_price
from prometheus_client import generate_latest

from cliproxy_proxy.config import Budget, ConfigError, ModelPrice, parse_config
from cliproxy_proxy.counters import period
from cliproxy_proxy.pricing import Prices, table_rates
from cliproxy_proxy.translate.canonical import Usage

from ..fakes.anthropic_upstream import DEFAULT_KEY as ANTHROPIC_KEY
from ..fakes.anthropic_upstream import start_anthropic
from ..support.proxy import CLIENT_KEY, FakeProvider, RunningProxy, base_config, compat_block
from ..support.redis_server import RedisServer

TEAM = "team-key-1"
GUARD = 10.0  # seconds: a request slower than this hangs


@pytest.mark.parametrize(
    ("model", "usage"),
    [
        ("gpt-4o", Usage(input=1200, output=300, cached=1000)),
        ("claude-sonnet-4-20250514", Usage(input=4740, output=255, cached=100, cache_write=4000)),
        ("gemini-2.5-pro", Usage(input=250_000, output=900, cached=10_000)),  # past its 200k-token tier
        ("gemini-2.5-pro", Usage(input=1000, output=10)),
    ],
)  # fmt: skip
def test_the_cached_rates_price_an_answer_as_genai_prices_itself_does(model: str, usage: Usage) -> None:
    rates = table_rates(model, "http://127.0.0.1:1")  # a base URL no provider has: found by the model alone
    assert rates is not None
    reported = TableUsage(input_tokens=usage.input, output_tokens=usage.output, cache_read_tokens=usage.cached,
                          cache_write_tokens=usage.cache_write)  # fmt: skip
    assert rates.cost(usage) == pytest.approx(float(calc_price(reported, model).total_price), rel=1e-9)


def test_an_override_wins_over_the_table_and_an_unknown_model_has_no_price() -> None:
    prices = Prices({"gpt-4*": ModelPrice(input=1, output=2, cached_input=0.5)})
    rates = prices.rates("https://api.openai.com/v1", "gpt-4o", "gpt-4o")
    assert rates is not None and rates.cost(Usage(input=3_000_000, output=1_000_000, cached=2_000_000)) == 4.0
    assert prices.rates("https://api.openai.com/v1", "up-4", "GPT-4-alias") is rates  # the exposed id matches too
    assert prices.rates("http://127.0.0.1:1", "no-such-model-anywhere", "mine") is None


async def _metrics(running: RunningProxy, key: str = CLIENT_KEY) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session, session.get(f"{running.url}/v1/metrics/clients",
                                                               headers=headers) as got:  # fmt: skip
        assert got.status == 200
        return dict(await got.json())


async def test_a_passed_through_anthropic_answer_counts_cached_tokens_and_cost_per_client(
    aiohttp_server, start_proxy
) -> None:  # type: ignore[no-untyped-def]
    """Before, a same-format Anthropic answer was counted as 0 tokens: its usage is not OpenAI's."""
    _, url = await start_anthropic(aiohttp_server, cached_tokens=40)
    config = base_config(**{
        "claude-api-key": [{"api-key": ANTHROPIC_KEY, "base-url": url, "models": [{"name": "claude-sonnet-4-6"}]}],
        "client-keys": [{"name": "team", "api-key": TEAM, "budget": {"usd": 100, "per": "day"}}],
        "pricing": {"claude-sonnet-*": {"input": 3, "output": 15, "cached-input": 0.3}},
    })  # fmt: skip
    running = await start_proxy(config)
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=TEAM, max_retries=0, timeout=GUARD)
    answer = await client.messages.create(model="claude-sonnet-4-6", max_tokens=20,
                                          messages=[{"role": "user", "content": "hello there"}])  # fmt: skip
    used = answer.usage
    prompt = used.input_tokens + 40
    cost = (used.input_tokens * 3 + 40 * 0.3 + used.output_tokens * 15) / 1e6
    exported = generate_latest(running.proxy.metrics.registry).decode()
    assert 'cliproxy_client_tokens_total{client="team",direction="cached"} 40.0' in exported
    assert f'cliproxy_client_tokens_total{{client="team",direction="input"}} {float(prompt)}' in exported
    assert 'cliproxy_client_cost_usd_total{client="team"}' in exported
    assert TEAM not in exported

    own = await _metrics(running, TEAM)  # a named key sees itself only
    assert list(own) == ["team"]
    team = own["team"]
    assert (team["request_count"], team["input_tokens"], team["cached_tokens"]) == (1, prompt, 40)
    assert team["cost_usd"] == pytest.approx(cost, abs=1e-6)
    await asyncio.sleep(0.1)  # the budget settles in the background
    spend = (await _metrics(running, TEAM))["team"]["budget"]
    assert spend["usd"] == 100 and spend["spent_usd"] == pytest.approx(cost, abs=2e-6)
    assert set(await _metrics(running)) == {"api-keys[0]", "team"}  # a plain key sees every client, by name


async def test_an_unpriced_model_costs_nothing_and_is_counted(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    answer = await running.client().chat.completions.create(model="small", messages=[{"role": "user", "content": "x"}])
    assert answer.choices[0].message.content
    exported = generate_latest(running.proxy.metrics.registry).decode()
    assert 'cliproxy_unpriced_requests_total{model="small",provider="fake"} 1.0' in exported
    assert 'cliproxy_client_requests_total{client="api-keys[0]",status="200"} 1.0' in exported  # never the key


@pytest.fixture
def redis_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis"])
async def test_a_usd_budget_refuses_once_spent_on_every_replica(
    shared: bool, provider: FakeProvider, redis_server: RedisServer, start_proxy
) -> None:
    team = {"name": "team", "api-key": TEAM, "budget": {"usd": 0.001, "per": "month"}}
    config = base_config(**{
        "openai-compatibility": [compat_block(provider.url)], "client-keys": [team],
        "pricing": {"small": {"input": 100, "output": 100}},  # $0.0001 a token: one answer spends the budget
    })  # fmt: skip
    if shared:
        config["redis"] = {"url": redis_server.url, "timeout": 5.0}
    first = await start_proxy(config)
    second = await start_proxy(config) if shared else first
    ask = {"model": "small", "messages": [{"role": "user", "content": "spend it all please now"}]}
    await first.client(key=TEAM).chat.completions.create(**ask)
    refusal = None
    for _ in range(100):  # the spend settles in the background
        try:
            await second.client(key=TEAM).chat.completions.create(**ask)
        except openai.RateLimitError as refused:
            refusal = refused
            break
        await asyncio.sleep(0.05)
    assert refusal is not None and "budget" in refusal.message and refusal.code == "rate_limit_exceeded"
    assert 0 < int(refusal.response.headers["Retry-After"]) <= 31 * 86400
    spend = (await _metrics(second, TEAM))["team"]["budget"]
    assert spend["spent_usd"] >= 0.001


async def test_the_request_log_holds_one_line_per_request_and_no_secret(
    provider: FakeProvider, start_proxy, tmp_path: Path
) -> None:
    log = tmp_path / "requests.jsonl"
    config = base_config(**{
        "openai-compatibility": [compat_block(provider.url, keys=("upstream-secret-1",))],
        "request-log": {"enabled": True, "path": str(log)},
    })  # fmt: skip
    provider.state.keys = frozenset({"upstream-secret-1"})
    running = await start_proxy(config)
    stream = await running.client().chat.completions.create(
        model="small", stream=True, messages=[{"role": "user", "content": "a secret body"}],
        extra_headers={"X-Request-Id": "req-42"},
    )  # fmt: skip
    async for _ in stream:
        pass
    with pytest.raises(openai.NotFoundError):
        await running.client().chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}],
                                                       extra_headers={"X-Request-Id": '"} {"forged": 1'})  # fmt: skip
    await running.proxy.accounting.request_log.drain()
    text = log.read_text()
    for secret in ("upstream-secret-1", CLIENT_KEY, "a secret body"):
        assert secret not in text
    answered, refused = [orjson.loads(line) for line in text.splitlines()]
    assert answered["request_id"] == "req-42" and answered["client"] == "api-keys[0]"
    assert (answered["model"], answered["provider"], answered["status"], answered["retries"]) == ("small", "fake",
                                                                                                  200, 0)  # fmt: skip
    assert answered["input_tokens"] > 0 and answered["output_tokens"] > 0 and answered["ttft_ms"] is not None
    assert len(answered["credential"]) == 12 and answered["latency_ms"] >= answered["ttft_ms"]
    assert refused["status"] == 404 and refused["model"] is None and "forged" not in text
    assert len(refused["request_id"]) == 16  # the proxy's own id, not the caller's


async def test_a_negative_usage_from_an_upstream_is_counted_as_zero_not_a_500(aiohttp_server, start_proxy) -> None:  # type: ignore[no-untyped-def]
    """Prometheus refuses to count down (the request used to end in a 500), and a budget must not be refunded."""
    _, url = await start_anthropic(aiohttp_server, cached_tokens=-(10**6))
    config = base_config(**{
        "claude-api-key": [{"api-key": ANTHROPIC_KEY, "base-url": url, "models": [{"name": "claude-sonnet-4-6"}]}],
        "client-keys": [{"name": "team", "api-key": TEAM, "budget": {"usd": 1}}],
    })  # fmt: skip
    running = await start_proxy(config)
    answer = await running.client(key=TEAM).chat.completions.create(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content
    team = (await _metrics(running, TEAM))["team"]
    assert (team["input_tokens"], team["cached_tokens"]) == (0, 0) and team["output_tokens"] > 0
    assert team["cost_usd"] >= 0


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"client-keys": [{"name": "a", "api-key": "k1", "budget": {"per": "day"}}]}, "needs tokens, usd or both"),
        ({"client-keys": [{"name": "a", "api-key": "k1", "budget": {"usd": -1}}]}, "client-keys[0].budget.usd"),
        ({"client-keys": [{"name": "a", "api-key": "k1", "budget": {"usd": "inf"}}]}, "client-keys[0].budget.usd"),
        ({"pricing": {"m*": {"input": -1, "output": 1}}}, "pricing.m*.input"),
        ({"pricing": {"m*": {"input": "nan", "output": 1}}}, "pricing.m*.input"),
        ({"pricing": {"m*": {"input": 1}}}, "pricing.m*.output"),
        ({"request-log": {"enabled": True, "path": ""}}, "request-log.path"),
        ({"request-log": {"enabled": True, "file": "x"}}, "request-log.file"),
    ],
)
def test_bad_pricing_budgets_and_request_logs_are_refused_with_their_path(
    document: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(document)
    assert message in str(refused.value) and "k1" not in str(refused.value)


def test_cliproxyapi_request_log_switch_is_accepted_and_ignored() -> None:
    config = parse_config({"request-log": True})
    assert not config.request_log.enabled
    assert any(note.startswith("request-log: ignored") for note in config.ignored)


async def test_a_request_log_that_cannot_be_written_costs_requests_nothing(
    provider: FakeProvider, start_proxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "missing" / "requests.jsonl"
    config = base_config(**{"openai-compatibility": [compat_block(provider.url)],
                            "request-log": {"enabled": True, "path": str(log)}})  # fmt: skip
    running = await start_proxy(config)
    for _ in range(3):
        await running.client().chat.completions.create(model="small", messages=[{"role": "user", "content": "x"}])
    await running.proxy.accounting.request_log.drain()
    assert not log.exists() and "request-log: cannot write to" in caplog.text


def test_a_period_is_the_utc_day_or_month_and_the_seconds_left_in_it() -> None:
    day, month = Budget(tokens=1, per="day"), Budget(tokens=1, per="month")
    at = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    assert period(day, at) == ("2026-12-31", 1) and period(month, at) == ("2026-12", 1)
    assert period(None, at) == ("2026-12", 1)  # a key without a budget is counted by the month
    assert period(day, at + 1) == ("2027-01-01", 86400) and period(month, at + 1) == ("2027-01", 31 * 86400)
    earlier = datetime(2026, 2, 10, 12, tzinfo=UTC).timestamp()  # the kept period is only a cache: any time works
    assert period(day, earlier) == ("2026-02-10", 12 * 3600)
    assert period(month, earlier) == ("2026-02", 18 * 86400 + 12 * 3600)
    assert period(month, at) == ("2026-12", 1)
