"""What real clients trip on (issue 12), each reproduced with that client's own SDK through the proxy.

The upstreams are the strict vendor fakes of ``tests/fakes``; every test would fail on the code before its fix.
"""

from __future__ import annotations

import asyncio

import pytest
from google import genai
from google.genai import types as genai_types

from ..conftest import CLIENT_KEY, base_config
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
