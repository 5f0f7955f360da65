"""What real clients trip on (issue 12), each reproduced with that client's own SDK through the proxy.

The upstreams are the strict vendor fakes of ``tests/fakes``; every test would fail on the code before its fix.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import anthropic
import openai
import pydantic
import pytest
from google import genai
from google.genai import types as genai_types

from cliproxy_proxy.config import parse_config
from cliproxy_proxy.runtime import build_runtime

from ..fakes.anthropic_upstream import DEFAULT_KEY as ANTHROPIC_KEY
from ..fakes.anthropic_upstream import start_anthropic
from ..fakes.gemini_upstream import GEMINI_KEY, GeminiFault, start_gemini
from ..fakes.responses_upstream import KEYS as RESPONSES_KEYS
from ..fakes.responses_upstream import start_responses
from ..support.proxy import CLIENT_KEY, FakeProvider, base_config, compat_block


def genai_client(url: str) -> genai.Client:
    return genai.Client(api_key=CLIENT_KEY, http_options=genai_types.HttpOptions(base_url=url))


@pytest.fixture
async def gemini_proxy(aiohttp_server, start_proxy):  # type: ignore[no-untyped-def]
    """A proxy in front of a fake Gemini serving ``g-flash``, with a keep-alive far shorter than the fake's delay."""
    gemini, url = await start_gemini(aiohttp_server)
    block = {"api-key": GEMINI_KEY, "base-url": url, "models": [{"name": "gemini-2.5-flash", "alias": "g-flash"}]}
    config = base_config(**{"gemini-api-key": [block], "streaming": {"keepalive-seconds": 0.02}})
    return gemini, await start_proxy(config)


async def test_google_genai_streams_survive_keepalives_while_the_upstream_is_slow(gemini_proxy) -> None:
    gemini, running = gemini_proxy
    client = genai_client(running.url)
    gemini.fail_next("*", GeminiFault(delay=0.15), GeminiFault(delay=0.15))

    stream = await client.aio.models.generate_content_stream(model="g-flash", contents="slow hello")
    text = "".join([chunk.text or "" async for chunk in stream])

    def sync_stream() -> str:
        chunks = client.models.generate_content_stream(model="g-flash", contents="slow again")
        return "".join(chunk.text or "" for chunk in chunks)

    again = await asyncio.to_thread(sync_stream)
    assert "slow hello" in text and "slow again" in again
    seen = {name.lower(): value for name, value in gemini.last.headers.items()}
    assert seen["x-goog-api-key"] == GEMINI_KEY and "google-genai-sdk" in seen["x-goog-api-client"]  # same format


@pytest.fixture
async def claude_proxy(aiohttp_server, start_proxy):  # type: ignore[no-untyped-def]
    claude, url = await start_anthropic(aiohttp_server)
    block = {"api-key": ANTHROPIC_KEY, "base-url": url, "models": [{"name": "claude-sonnet-4-6", "alias": "c-sonnet"}]}
    running = await start_proxy(base_config(**{"claude-api-key": [block]}))
    return claude, anthropic.AsyncAnthropic(base_url=running.url, api_key=CLIENT_KEY, max_retries=0)


async def test_claude_code_betas_reach_the_upstream_and_its_headers_come_back(claude_proxy) -> None:
    """Claude Code's bodies use fields its ``anthropic-beta`` header unlocks: without the header, a 400."""
    claude, client = claude_proxy
    betas = ["context-management-2025-06-27", "effort-2025-11-24"]
    edits: Any = {"edits": [{"type": "clear_tool_uses_20250919"}]}
    raw = await client.beta.messages.with_raw_response.create(
        model="c-sonnet", max_tokens=64, betas=betas, context_management=edits,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "hello beta"}],
    )  # fmt: skip
    message = await raw.parse()
    assert "hello beta" in message.content[0].text  # type: ignore[union-attr]
    seen = claude.received[-1].headers
    assert seen["anthropic-beta"] == ",".join(betas) and seen["x-api-key"] == ANTHROPIC_KEY
    assert CLIENT_KEY not in str(seen)  # the client's own key never travels on
    assert raw.headers["request-id"].startswith("req_") and message._request_id == raw.headers["request-id"]
    assert raw.headers["anthropic-ratelimit-requests-remaining"] == "99"

    asked: Any = {"model": "c-sonnet", "max_tokens": 64, "betas": betas, "context_management": edits}
    async with client.beta.messages.stream(**asked, messages=[{"role": "user", "content": "stream beta"}]) as stream:
        final = await stream.get_final_message()
        assert stream.response.headers["request-id"].startswith("req_")
    assert "stream beta" in final.content[0].text  # type: ignore[union-attr]


def test_a_client_anthropic_version_replaces_the_default_and_keys_stay_the_proxys() -> None:
    config = parse_config({"claude-api-key": [{"api-key": "sk-proxy", "models": [{"name": "m"}]}]})
    credential = build_runtime(config, None).credentials[0]
    vendor = {"anthropic-version": "2099-01-01", "anthropic-beta": "b1", "x-api-key": "sk-client"}
    head = credential.head("/v1/messages", vendor).decode().lower()
    assert head.count("anthropic-version:") == 1 and "anthropic-version: 2099-01-01" in head
    assert "anthropic-beta: b1" in head and "x-api-key: sk-proxy" in head and "sk-client" not in head
    same = credential.head("/v1/messages", {"anthropic-version": "2023-06-01"}).decode().lower()
    assert same.count("anthropic-version:") == 1


SCHEMA = {"type": "object", "properties": {"task": {"type": "string"}}, "required": ["task"]}
#: The tools Codex CLI's default config declares, in small: a namespace of functions it runs itself, web_search.
CODEX_TOOLS: Any = [
    {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.",
     "tools": [{"type": "function", "name": "spawn_agent", "description": "Spawn", "strict": False,
                "parameters": SCHEMA}]},
    {"type": "web_search", "external_web_access": False},
]  # fmt: skip


async def test_codex_namespace_tools_are_flattened_and_hosted_tools_dropped(claude_proxy, start_proxy) -> None:
    claude, anthropic_client = claude_proxy
    client = openai.AsyncOpenAI(base_url=f"{anthropic_client.base_url}".rstrip("/") + "/v1", api_key=CLIENT_KEY,
                                max_retries=0)  # fmt: skip
    raw = await client.responses.with_raw_response.create(model="c-sonnet", input="spawn one", tools=CODEX_TOOLS)
    first = raw.parse()
    call = next(item for item in first.output if item.type == "function_call")
    assert (call.name, call.namespace) == ("spawn_agent", "multi_agent_v1")  # type: ignore[union-attr]
    assert raw.headers["x-cliproxy-dropped-tools"] == "web_search"
    assert [t["name"] for t in claude.received[-1].body["tools"]] == ["multi_agent_v1__spawn_agent"]

    stream = await client.responses.create(model="c-sonnet", input="spawn again", tools=CODEX_TOOLS, stream=True)
    done = [e.item async for e in stream if e.type == "response.output_item.done" and e.item.type == "function_call"]
    assert done[0].namespace == "multi_agent_v1" and done[0].name == "spawn_agent"  # type: ignore[union-attr]

    history: Any = [
        {"role": "user", "content": "spawn one"},
        {"type": "function_call", "call_id": call.call_id, "name": "spawn_agent", "namespace": "multi_agent_v1",  # type: ignore[union-attr]
         "arguments": call.arguments},  # type: ignore[union-attr]
        {"type": "function_call_output", "call_id": call.call_id, "output": "agent 7 started"},  # type: ignore[union-attr]
    ]  # fmt: skip
    last = await client.responses.create(model="c-sonnet", input=history, tools=CODEX_TOOLS)
    assert last.status == "completed"
    sent = claude.received[-1].body["messages"][1]["content"]
    assert [b["name"] for b in sent if b["type"] == "tool_use"] == ["multi_agent_v1__spawn_agent"]


async def test_hosted_tools_refused_when_configured(aiohttp_server, start_proxy) -> None:
    claude, url = await start_anthropic(aiohttp_server)
    block = {"api-key": ANTHROPIC_KEY, "base-url": url, "models": [{"name": "claude-sonnet-4-6", "alias": "c-sonnet"}]}
    running = await start_proxy(base_config(**{"claude-api-key": [block], "hosted-tools": "refuse"}))
    with pytest.raises(openai.BadRequestError) as refused:
        await running.client().responses.create(model="c-sonnet", input="search", tools=CODEX_TOOLS)
    assert "web_search" in refused.value.message and claude.received == []


async def test_streamed_usage_is_counted_when_the_client_did_not_ask_for_it(
    provider: FakeProvider, start_proxy
) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    stream = await running.client().chat.completions.create(
        model="small", messages=[{"role": "user", "content": "count these words"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: count these words"
    assert all(c.choices and c.usage is None for c in chunks)  # not asked for: not relayed
    assert provider.received[-1].body["stream_options"] == {"include_usage": True}
    async with aiohttp.ClientSession() as session, session.get(running.url + "/metrics") as response:
        metrics = await response.text()
    assert 'cliproxy_tokens_total{model="small",provider="fake",type="output"} 4.0' in metrics

    asked = await running.client().chat.completions.create(
        model="small", messages=[{"role": "user", "content": "again"}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    usage = [c.usage async for c in asked if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 2


async def test_google_genai_lists_and_gets_models_and_sees_the_alias(gemini_proxy) -> None:
    _, running = gemini_proxy
    client = genai_client(running.url)
    listed = [model.name async for model in await client.aio.models.list()]
    assert listed == ["models/g-flash"]
    model = await client.aio.models.get(model="g-flash")
    assert model.name == "models/g-flash" and model.display_name == "g-flash"
    with pytest.raises(genai.errors.ClientError) as missing:
        await client.aio.models.get(model="nope")
    assert missing.value.code == 404

    answer = await client.aio.models.generate_content(model="g-flash", contents="which model")
    assert answer.model_version == "g-flash"  # the alias asked for, not the upstream's name
    stream = await client.aio.models.generate_content_stream(model="g-flash", contents="which model")
    assert {chunk.model_version async for chunk in stream} == {"g-flash"}


async def test_anthropic_retrieves_a_model_in_its_own_shape(claude_proxy) -> None:
    _, client = claude_proxy
    model = await client.models.retrieve("c-sonnet")
    assert (model.id, model.type, model.display_name) == ("c-sonnet", "model", "c-sonnet")
    assert [m.id async for m in client.models.list()] == ["c-sonnet"]
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.models.retrieve("nope")
    assert missing.value.body["type"] == "error"  # type: ignore[index]


class Weather(pydantic.BaseModel):
    city: str
    sunny: bool


async def test_response_format_crosses_to_gemini_responses_and_anthropic(aiohttp_server, start_proxy) -> None:
    gemini, gemini_url = await start_gemini(aiohttp_server)
    claude, claude_url = await start_anthropic(aiohttp_server)
    codex, codex_url = await start_responses(aiohttp_server)
    running = await start_proxy(base_config(**{
        "gemini-api-key": [{"api-key": GEMINI_KEY, "base-url": gemini_url, "models": [{"name": "gemini-2.5-flash"}]}],
        "claude-api-key": [{"api-key": ANTHROPIC_KEY, "base-url": claude_url,
                            "models": [{"name": "claude-sonnet-4-6"}]}],
        "codex-api-key": [{"api-key": sorted(RESPONSES_KEYS)[0], "base-url": codex_url,
                           "models": [{"name": "gpt-5-codex"}]}],
    }))  # fmt: skip
    client = running.client()
    question: Any = [{"role": "user", "content": "Paris"}]
    parsed = await client.chat.completions.parse(model="gemini-2.5-flash", messages=question, response_format=Weather)
    assert parsed.choices[0].message.parsed == Weather(city="Paris", sunny=True)
    config = gemini.last.body["generationConfig"]
    assert config["responseMimeType"] == "application/json" and set(config["responseSchema"]["properties"]) == {
        "city",
        "sunny",
    }

    schema: Any = {"type": "json_schema", "json_schema": {"name": "weather", "schema": Weather.model_json_schema()}}
    await client.chat.completions.create(model="gpt-5-codex", messages=question, response_format=schema)
    form = codex.received[-1].body["text"]["format"]
    assert form["type"] == "json_schema" and form["schema"]["properties"]["city"] == {"title": "City", "type": "string"}

    await client.chat.completions.create(model="claude-sonnet-4-6", messages=question,
                                         response_format={"type": "json_object"})  # fmt: skip
    assert "Answer with one JSON object" in json.dumps(claude.received[-1].body["system"])


def test_vendor_headers_never_carry_the_clients_credentials_or_account() -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    from cliproxy_proxy.vendor_headers import forwarded

    sent = CIMultiDict([("X-Goog-Api-Key", "k"), ("X-Goog-Iam-Authorization-Token", "t"), ("x-goog-user-project", "p"),
                        ("X-Goog-Api-Client", "genai/1"), ("Authorization", "Bearer k")])  # fmt: skip
    assert forwarded(CIMultiDictProxy(sent), ("x-goog-",)) == {"x-goog-api-client": "genai/1"}
    betas = CIMultiDict([("anthropic-beta", "a"), ("Anthropic-Beta", "b"), ("anthropic-dangerous", "bad\x00value")])
    assert forwarded(CIMultiDictProxy(betas), ("anthropic-",)) == {"anthropic-beta": "a, b"}
    openai_sent = CIMultiDict([("OpenAI-Organization", "org"), ("OpenAI-Beta", "responses=v1")])
    assert forwarded(CIMultiDictProxy(openai_sent), ("openai-beta",)) == {"openai-beta": "responses=v1"}


async def test_claude_server_tools_are_dropped_and_output_config_crosses(gemini_proxy) -> None:
    gemini, running = gemini_proxy
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=CLIENT_KEY, max_retries=0)
    raw = await client.messages.with_raw_response.create(
        model="g-flash", max_tokens=64, messages=[{"role": "user", "content": "Paris"}],
        tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": Weather.model_json_schema()}}},
    )  # fmt: skip
    assert raw.headers["x-cliproxy-dropped-tools"] == "web_search_20250305"
    message = await raw.parse()
    assert Weather.model_validate_json(message.content[0].text) == Weather(city="Paris", sunny=True)  # type: ignore[union-attr]
    config = gemini.last.body["generationConfig"]
    assert "tools" not in gemini.last.body and config["responseMimeType"] == "application/json"
