"""The fault-injection load of issue 12, shared by the test (a few hundred requests) and ``make bench`` (6,000).

One model, two credentials on two upstreams that each fail 10 % of requests (429, 500, dropped connections),
the proxy on its DEFAULT config, and the real ``openai`` SDK as the client with ``max_retries=0`` at a
concurrency of 16. Every request is counted by outcome; a stream that ends without an error but without its
whole answer is ``truncated``: the one outcome that must never happen.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import openai

MODEL = "gpt-4o-mini"
PROMPT = "the quick brown fox jumps over the lazy dog"
EXPECTED = f"echo: {PROMPT}"
CONCURRENCY = 16


def gateway_config(client_key: str, upstreams: list[tuple[str, str]]) -> dict[str, Any]:
    """The proxy's config: client auth and the credentials, nothing else (every knob at its default)."""
    blocks = [
        {"name": f"upstream{i}", "base-url": url, "api-key-entries": [{"api-key": key}], "models": [{"name": MODEL}]}
        for i, (url, key) in enumerate(upstreams)
    ]
    return {"api-keys": [client_key], "openai-compatibility": blocks}


def _failure(error: openai.APIError) -> str:
    if isinstance(error, openai.APIStatusError):
        return f"{error.status_code} {error.code or ''}".strip()
    return type(error).__name__


async def _plain(client: openai.AsyncOpenAI) -> str:
    try:
        completion = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}])
    except openai.APIError as error:
        return _failure(error)
    except ValueError:  # the SDK could not parse the body: a half answer got through
        return "invalid_body"
    choice = completion.choices[0]
    return "ok" if choice.message.content == EXPECTED and choice.finish_reason == "stop" else "wrong_answer"


async def _stream(client: openai.AsyncOpenAI) -> str:
    try:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
        )
    except openai.APIError as error:
        return _failure(error)
    text, finish = "", None
    try:
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
    except openai.APIError:
        return "stream_error"  # said so in the stream: a drop after the first byte cannot be hidden
    return "ok" if text == EXPECTED and finish == "stop" else "truncated"


async def drive(client: openai.AsyncOpenAI, requests: int, *, stream: bool) -> Counter[str]:
    """Send ``requests`` chat completions, ``CONCURRENCY`` at a time; count them by outcome."""
    gate = asyncio.Semaphore(CONCURRENCY)
    call = _stream if stream else _plain

    async def one() -> str:
        async with gate:
            return await call(client)

    return Counter(await asyncio.gather(*(one() for _ in range(requests))))


def success_rate(outcomes: Counter[str]) -> float:
    return outcomes["ok"] / max(1, sum(outcomes.values()))
