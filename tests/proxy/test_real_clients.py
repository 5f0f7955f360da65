"""What real clients trip on (issue 12), each reproduced with that client's own SDK through the proxy.

The upstreams are the strict vendor fakes of ``tests/fakes``; every test would fail on the code before its fix.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import pytest
from google import genai
from google.genai import types as genai_types

from cliproxy_proxy.config import parse_config
from cliproxy_proxy.runtime import build_runtime

from ..conftest import CLIENT_KEY, base_config
from ..fakes.anthropic_upstream import DEFAULT_KEY as ANTHROPIC_KEY
from ..fakes.anthropic_upstream import start_anthropic
from ..fakes.gemini_upstream import GEMINI_KEY, GeminiFault, start_gemini


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
