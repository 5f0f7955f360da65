"""Any client format to any provider format, end to end with the official SDKs against fake providers."""

from __future__ import annotations

import json

import aiohttp
import anthropic
import openai
import orjson
import pytest
from openai.types.chat.completion_create_params import CompletionCreateParams
from pydantic import TypeAdapter

from ..support.proxy import CLIENT_KEY, FakeProvider, base_config, compat_block

OPENAI_REQUEST = TypeAdapter(CompletionCreateParams)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}


def anthropic_client(url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key=CLIENT_KEY, max_retries=0)


async def test_thinking_suffix_becomes_reasoning_effort_for_openai_providers(
    provider: FakeProvider, start_proxy
) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    completion = await running.client().chat.completions.create(
        model="small(high)", messages=[{"role": "user", "content": "think hard"}]
    )
    assert completion.choices[0].message.content == "echo: think hard"
    seen = provider.received[-1].body
    OPENAI_REQUEST.validate_python(seen)
    assert (seen["model"], seen["reasoning_effort"]) == ("up-small", "high")


async def test_anthropic_clients_list_models_in_their_shape(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url, prefix="p")]}))
    page = await anthropic_client(running.url).models.list()
    assert sorted(m.id for m in page.data) == ["p/small", "small"]
    assert all(m.type == "model" for m in page.data)


async def test_anthropic_client_reaches_an_openai_provider(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    client = anthropic_client(running.url)
    message = await client.messages.create(
        model="small", max_tokens=100, system="be brief", messages=[{"role": "user", "content": "hello there"}]
    )
    assert message.content[0].type == "text" and message.content[0].text == "echo: hello there"
    assert message.model == "small" and message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 3
    seen = provider.received[-1].body
    OPENAI_REQUEST.validate_python(seen)
    assert seen["messages"][0] == {"role": "system", "content": "be brief"}
    assert seen["max_tokens"] == 100

    async with client.messages.stream(
        model="small", max_tokens=100, messages=[{"role": "user", "content": "stream this please"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "echo: stream this please"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 4


async def test_anthropic_client_gets_streamed_tool_calls_from_an_openai_provider(
    provider: FakeProvider, start_proxy
) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    tool = {"name": "get_weather", "description": "Weather", "input_schema": WEATHER["function"]["parameters"]}
    async with anthropic_client(running.url).messages.stream(
        model="small", max_tokens=100, tools=[tool], messages=[{"role": "user", "content": "Paris"}]
    ) as stream:
        final = await stream.get_final_message()
    call = final.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"query": "Paris"}
    assert final.stop_reason == "tool_use"
    assert provider.received[-1].body["tools"][0]["function"]["name"] == "get_weather"


async def test_anthropic_shaped_errors_for_anthropic_clients(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    with pytest.raises(anthropic.NotFoundError) as caught:
        await anthropic_client(running.url).messages.create(
            model="nope", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    assert "nope" in json.dumps(caught.value.body)
    with pytest.raises(anthropic.AuthenticationError):
        await anthropic.AsyncAnthropic(base_url=running.url, api_key="wrong", max_retries=0).messages.create(
            model="small", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )


async def test_untranslatable_request_is_a_400_in_the_clients_format(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    with pytest.raises(openai.BadRequestError) as caught:
        await running.client().chat.completions.create(
            model="small(high)", n=2, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "untranslatable_request"
    assert "n: only one choice" in caught.value.message
    assert provider.received == []


def claude_block(provider: FakeProvider, **extra: object) -> dict[str, object]:
    """A claude-api-key entry in front of the demo upstream's Anthropic endpoint."""
    return {"api-key": "key-a", "base-url": provider.url.removesuffix("/v1"),
            "models": [{"name": "up-small", "alias": "claude"}], **extra}  # fmt: skip


async def test_openai_client_reaches_a_claude_provider(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"claude-api-key": [claude_block(provider)]}))
    completion = await running.client().chat.completions.create(
        model="claude", messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "hi there"}]
    )
    assert (completion.choices[0].message.content, completion.model) == ("echo: hi there", "claude")
    assert completion.id.startswith("chatcmpl-")  # OpenAI's id shape, whatever the provider's was
    assert completion.choices[0].finish_reason == "stop"
    seen = provider.received[-1]
    assert seen.path == "/v1/messages" and seen.headers["x-api-key"] == "key-a"
    assert "Authorization" not in seen.headers
    assert seen.body["system"] in ("sys", [{"type": "text", "text": "sys"}])
    assert seen.body["max_tokens"] > 0 and seen.body["model"] == "up-small"

    stream = await running.client().chat.completions.create(
        model="claude(low)", messages=[{"role": "user", "content": "one two three"}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: one two three"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert provider.received[-1].body["thinking"] == {"type": "enabled", "budget_tokens": 1024}


async def test_token_counting_asks_a_provider_that_can_count(provider: FakeProvider, start_proxy) -> None:
    config = base_config(**{"claude-api-key": [claude_block(provider)],
                            "openai-compatibility": [compat_block(provider.url)]})  # fmt: skip
    running = await start_proxy(config)
    client = anthropic_client(running.url)
    counted = await client.messages.count_tokens(model="claude", messages=[{"role": "user", "content": "a b c"}])
    assert counted.input_tokens > 0
    assert provider.received[-1].path == "/v1/messages/count_tokens"
    assert provider.received[-1].body["model"] == "up-small"
    with pytest.raises(anthropic.APIStatusError) as caught:
        await client.messages.count_tokens(model="small", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 501


async def test_responses_client_reaches_an_openai_chat_provider(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    client = running.client()
    response = await client.responses.create(model="small", instructions="be brief", input="hello responses")
    assert response.output_text == "echo: hello responses"
    assert response.model == "small" and response.usage is not None and response.usage.output_tokens == 3
    seen = provider.received[-1].body
    OPENAI_REQUEST.validate_python(seen)
    assert seen["messages"][0] == {"role": "system", "content": "be brief"}

    async with client.responses.stream(model="small", input="stream me", tools=[
        {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}
    ]) as stream:  # fmt: skip
        final = await stream.get_final_response()
    call = next(item for item in final.output if item.type == "function_call")
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"query": "stream me"})


async def test_gemini_client_reaches_an_openai_chat_provider(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    body = {"systemInstruction": {"parts": [{"text": "sys"}]},
            "contents": [{"role": "user", "parts": [{"text": "hello gemini"}]}]}  # fmt: skip
    headers = {"x-goog-api-key": CLIENT_KEY}
    async with aiohttp.ClientSession() as session:
        url = f"{running.url}/v1beta/models/small:generateContent"
        async with session.post(url, json=body, headers=headers) as response:
            assert response.status == 200
            answer = await response.json()
        async with session.post(url.replace(":generateContent", ":streamGenerateContent?alt=sse"), json=body,
                                headers=headers) as response:  # fmt: skip
            assert response.headers["Content-Type"].startswith("text/event-stream")
            events = [
                orjson.loads(line[5:]) for line in (await response.read()).splitlines() if line.startswith(b"data:")
            ]
    assert answer["candidates"][0]["content"]["parts"][0]["text"] == "echo: hello gemini"
    assert answer["candidates"][0]["finishReason"] == "STOP"
    assert answer["usageMetadata"]["candidatesTokenCount"] == 3
    streamed = "".join(
        p.get("text", "")
        for e in events
        for c in e.get("candidates", [])
        for p in c.get("content", {}).get("parts", [])
    )
    assert streamed == "echo: hello gemini"
    assert provider.received[-1].body["messages"][0] == {"role": "system", "content": "sys"}


async def test_broken_translated_stream_ends_in_the_clients_format(provider: FakeProvider, start_proxy) -> None:
    from cliproxy_proxy.demo_upstream import Fault

    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    provider.state.fail_next("*", Fault(drop_after=3))
    stream = await running.client().responses.create(model="small", input="cut me off", stream=True)
    events = [event async for event in stream]
    assert events[0].type == "response.created"
    assert [e.type for e in events].count("response.created") == 1  # one lifecycle, not a second one for the error
    assert events[-1].type == "response.failed"
    assert "interrupted" in (events[-1].response.error.message if events[-1].response.error else "")  # type: ignore[union-attr]
    assert "cut" in "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]


async def test_legacy_completions_reach_a_claude_provider(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"claude-api-key": [claude_block(provider)]}))
    client = running.client()
    completion = await client.completions.create(model="claude", prompt="say this", max_tokens=50)
    assert (completion.object, completion.choices[0].text, completion.model) == (
        "text_completion",
        "echo: say this",
        "claude",
    )
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert provider.received[-1].body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "say this"}]}
    ]
    stream = await client.completions.create(model="claude", prompt="stream this", max_tokens=50, stream=True)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo: stream this"
    assert chunks[-1].choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as caught:
        await client.completions.create(model="claude", prompt="x", echo=True)
    assert "echo: cannot be translated" in caught.value.message
