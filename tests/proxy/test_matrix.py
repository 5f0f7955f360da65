"""Every client SDK against every provider family, through the proxy: text, streamed tool calls, tool results.

The providers are strict fakes that validate each request against their vendor's real request types; the clients
are the official `openai` (chat and Responses) and `anthropic` SDKs. One conversation runs per pair: a system
prompt and a question, a streamed turn where the model calls a tool (its arguments arrive in pieces), and the tool's
answer (text and an image) sent back. That covers what cliproxyapi++ users report most: tool-call order, arguments
lost in streams, images inside tool results dropped.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from ..fakes.anthropic_upstream import DEFAULT_KEY as ANTHROPIC_KEY
from ..fakes.anthropic_upstream import AnthropicUpstream, start_anthropic
from ..fakes.anthropic_upstream import Fault as AnthropicFault
from ..fakes.bedrock import start_bedrock
from ..fakes.gemini_upstream import GEMINI_KEY, GeminiFault, GeminiUpstream, start_gemini
from ..fakes.responses_upstream import KEYS as RESPONSES_KEYS
from ..fakes.responses_upstream import start_responses
from ..support.proxy import CLIENT_KEY, FakeProvider, base_config, compat_block

IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
PROVIDERS = ("openai", "anthropic", "gemini", "responses", "bedrock")


@dataclass
class Providers:
    received: dict[str, Any]  # provider → its fake's list of received requests
    config: dict[str, Any]
    claude: AnthropicUpstream
    gemini: GeminiUpstream


@pytest.fixture
async def providers(provider: FakeProvider, aiohttp_server) -> Providers:
    claude, claude_url = await start_anthropic(aiohttp_server)
    gemini, gemini_url = await start_gemini(aiohttp_server)
    codex, codex_url = await start_responses(aiohttp_server)
    bedrock, bedrock_url = await start_bedrock(aiohttp_server)
    access, secret, token = bedrock.issue()
    config = base_config(**{
        "openai-compatibility": [compat_block(provider.url, models=[("up-small", "m-openai")])],
        "claude-api-key": [{"api-key": ANTHROPIC_KEY, "base-url": claude_url,
                            "models": [{"name": "claude-sonnet-4-6", "alias": "m-anthropic"}]}],
        "gemini-api-key": [{"api-key": GEMINI_KEY, "base-url": gemini_url,
                            "models": [{"name": "gemini-2.5-flash", "alias": "m-gemini"}]}],
        "codex-api-key": [{"api-key": sorted(RESPONSES_KEYS)[0], "base-url": codex_url,
                           "models": [{"name": "gpt-5-codex", "alias": "m-responses"}]}],
        "bedrock": [{"region": "us-east-1", "base-url": bedrock_url, "access-key-id": access,
                     "secret-access-key": secret, "session-token": token,
                     "models": [{"name": "anthropic.claude-sonnet-4-20250514-v1:0", "alias": "m-bedrock"}]}],
    })  # fmt: skip
    received = {"openai": provider.received, "anthropic": claude.received, "gemini": gemini.received,
                "responses": codex.received, "bedrock": bedrock.received}  # fmt: skip
    return Providers(received, config, claude, gemini)


def carries_image(body: Any) -> bool:
    return IMAGE in json.dumps(body)


@pytest.mark.parametrize("upstream", PROVIDERS)
async def test_openai_chat_client(upstream: str, providers: Providers, start_proxy) -> None:
    client = (await start_proxy(providers.config)).client()
    model = f"m-{upstream}"
    history: list[Any] = [{"role": "system", "content": "Answer briefly."},
                          {"role": "user", "content": "hello matrix"}]  # fmt: skip
    first = await client.chat.completions.create(model=model, messages=history)
    assert "hello matrix" in (first.choices[0].message.content or "")
    assert first.model == model and first.usage is not None and first.usage.prompt_tokens > 0

    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": SCHEMA}}
    history.append({"role": "user", "content": "Weather in Paris?"})
    stream = await client.chat.completions.create(model=model, messages=history, tools=[tool], stream=True)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += (delta.function.name or "") if delta.function else ""
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert finish == "tool_calls"
    assert [c["name"] for c in calls.values()] == ["get_weather"]
    arguments = json.loads(calls[0]["arguments"])  # whole, though it arrived in pieces
    assert isinstance(arguments, dict)

    function = {"name": "get_weather", "arguments": calls[0]["arguments"]}
    history.append({"role": "assistant", "content": None,
                    "tool_calls": [{"id": calls[0]["id"], "type": "function", "function": function}]})  # fmt: skip
    history.append({"role": "tool", "tool_call_id": calls[0]["id"], "content": "Sunny, 21 C"})
    history.append({"role": "user", "content": [
        {"type": "text", "text": "and this radar image"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE}"}},
    ]})  # fmt: skip
    last = await client.chat.completions.create(model=model, messages=history, tools=[tool])
    assert last.choices[0].finish_reason == "stop"
    assert carries_image(providers.received[upstream][-1].body)


@pytest.mark.parametrize("upstream", PROVIDERS)
async def test_anthropic_client(upstream: str, providers: Providers, start_proxy) -> None:
    running = await start_proxy(providers.config)
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=CLIENT_KEY, max_retries=0)
    model = f"m-{upstream}"
    first = await client.messages.create(model=model, max_tokens=256, system="Answer briefly.",
                                         messages=[{"role": "user", "content": "hello matrix"}])  # fmt: skip
    assert first.content[0].type == "text" and "hello matrix" in first.content[0].text
    assert first.stop_reason == "end_turn" and first.usage.input_tokens > 0

    tool = {"name": "get_weather", "description": "Weather", "input_schema": SCHEMA}
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    async with client.messages.stream(model=model, max_tokens=256, tools=[tool], messages=messages) as stream:
        final = await stream.get_final_message()
    uses = [block for block in final.content if block.type == "tool_use"]
    assert final.stop_reason == "tool_use" and [u.name for u in uses] == ["get_weather"]
    assert isinstance(uses[0].input, dict)

    messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]})
    messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": [
        {"type": "text", "text": "Sunny, 21 C"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE}},
    ]}]})  # fmt: skip
    last = await client.messages.create(model=model, max_tokens=256, tools=[tool], messages=messages)
    assert last.stop_reason == "end_turn"
    assert carries_image(providers.received[upstream][-1].body)  # the image inside the tool result survived


@pytest.mark.parametrize("upstream", PROVIDERS)
async def test_openai_responses_client(upstream: str, providers: Providers, start_proxy) -> None:
    client = (await start_proxy(providers.config)).client()
    model = f"m-{upstream}"
    first = await client.responses.create(model=model, instructions="Answer briefly.", input="hello matrix")
    assert "hello matrix" in first.output_text
    assert first.usage is not None and first.usage.input_tokens > 0

    tool = {"type": "function", "name": "get_weather", "description": "Weather", "parameters": SCHEMA, "strict": False}
    items: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    async with client.responses.stream(model=model, input=items, tools=[tool]) as stream:  # type: ignore[arg-type]
        final = await stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"]
    assert isinstance(json.loads(calls[0].arguments), dict)

    items.append({"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
                  "arguments": calls[0].arguments})  # fmt: skip
    items.append({"type": "function_call_output", "call_id": calls[0].call_id, "output": [
        {"type": "input_text", "text": "Sunny, 21 C"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{IMAGE}"},
    ]})  # fmt: skip
    last = await client.responses.create(model=model, input=items, tools=[tool])  # type: ignore[arg-type]
    assert last.status == "completed" and last.output_text
    assert carries_image(providers.received[upstream][-1].body)


@pytest.mark.parametrize("upstream", PROVIDERS)
async def test_gemini_client(upstream: str, providers: Providers, start_proxy) -> None:
    from google import genai
    from google.genai import types

    running = await start_proxy(providers.config)
    client = genai.Client(api_key=CLIENT_KEY, http_options=types.HttpOptions(base_url=running.url))
    model = f"m-{upstream}"
    config = types.GenerateContentConfig(system_instruction="Answer briefly.")
    first = await client.aio.models.generate_content(model=model, contents="hello matrix", config=config)
    assert "hello matrix" in (first.text or "")
    assert first.usage_metadata is not None and (first.usage_metadata.prompt_token_count or 0) > 0

    weather = types.FunctionDeclaration(name="get_weather", description="Weather", parameters_json_schema=SCHEMA)
    tools = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[weather])])
    stream = await client.aio.models.generate_content_stream(model=model, contents="Weather in Paris?", config=tools)
    calls = [call async for chunk in stream for call in (chunk.function_calls or [])]
    assert [c.name for c in calls] == ["get_weather"]
    assert isinstance(calls[0].args, dict)

    radar = types.Part.from_bytes(data=base64.b64decode(IMAGE), mime_type="image/png")
    question = types.Content(role="user", parts=[types.Part(text="and this radar image"), radar])
    last = await client.aio.models.generate_content(model=model, contents=[question])
    assert last.text
    assert carries_image(providers.received[upstream][-1].body)


async def test_parallel_tool_calls_keep_their_order_in_a_translated_stream(providers: Providers, start_proxy) -> None:
    providers.claude.parallel_calls = 2
    client = (await start_proxy(providers.config)).client()
    tools = [{"type": "function", "function": {"name": name, "parameters": SCHEMA}} for name in ("first", "second")]
    stream = await client.chat.completions.create(
        model="m-anthropic", messages=[{"role": "user", "content": "both please"}], tools=tools, stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    async for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            call["name"] += (delta.function.name or "") if delta.function else ""
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert [calls[i]["name"] for i in sorted(calls)] == ["first", "second"]
    assert all(isinstance(json.loads(c["arguments"]), dict) for c in calls.values())


async def test_reasoning_round_trips_with_its_signature_and_never_crosses_vendors(
    providers: Providers, start_proxy
) -> None:
    running = await start_proxy(providers.config)
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=CLIENT_KEY, max_retries=0)
    thinking = {"type": "enabled", "budget_tokens": 1024}
    messages: list[Any] = [{"role": "user", "content": "think about the answer"}]
    async with client.messages.stream(model="m-anthropic", max_tokens=2048, thinking=thinking,  # type: ignore[arg-type]
                                      messages=messages) as stream:  # fmt: skip
        first = await stream.get_final_message()
    blocks = [b.model_dump(exclude_none=True) for b in first.content]
    signed = next(b for b in blocks if b["type"] == "thinking")
    assert signed["signature"] and signed["thinking"]

    messages += [{"role": "assistant", "content": blocks}, {"role": "user", "content": "and again"}]
    again = await client.messages.create(model="m-anthropic", max_tokens=2048, thinking=thinking,  # type: ignore[arg-type]
                                         messages=messages)  # fmt: skip
    assert again.stop_reason == "end_turn"  # the fake accepts only signatures it issued: it came back intact
    replayed = providers.claude.received[-1].body["messages"][1]["content"][0]
    assert (replayed["type"], replayed["signature"]) == ("thinking", signed["signature"])

    await client.messages.create(model="m-gemini", max_tokens=2048, messages=messages)
    assert signed["signature"] not in json.dumps(providers.gemini.received[-1].body)  # Claude's proof stays home

    chat = await running.client().chat.completions.create(
        model="m-anthropic(low)", messages=[{"role": "user", "content": "think it over"}]
    )
    assert chat.choices[0].message.model_extra.get("reasoning_content")  # type: ignore[union-attr]


async def test_provider_errors_reach_each_client_in_its_own_format(providers: Providers, start_proxy) -> None:
    running = await start_proxy({**providers.config, "request-retry": 0})  # one 529 alone is retried otherwise
    providers.claude.fail_next(AnthropicFault(status=529, message="Overloaded"))
    with pytest.raises(openai.InternalServerError) as openai_error:
        await running.client().chat.completions.create(model="m-anthropic", messages=[{"role": "user", "content": "x"}])
    assert openai_error.value.status_code == 529 and "Overloaded" in openai_error.value.message
    assert openai_error.value.body["type"] == "server_error"  # type: ignore[index]

    providers.gemini.fail_next("*", GeminiFault(status=400, message="Invalid JSON payload received."))
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as anthropic_error:
        await client.messages.create(model="m-gemini", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    body = anthropic_error.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "Invalid JSON payload" in body["error"]["message"]  # type: ignore[index]


async def test_vertex_project_endpoint_with_an_access_token(providers: Providers, start_proxy) -> None:
    gemini_url = providers.config["gemini-api-key"][0]["base-url"]
    vertex = {"api-key": GEMINI_KEY, "base-url": gemini_url, "project": "my-project-1", "location": "europe-west4",
              "models": [{"name": "gemini-2.5-pro", "alias": "m-vertex"}]}  # fmt: skip
    client = (await start_proxy({**providers.config, "vertex-api-key": [vertex]})).client()
    reply = await client.chat.completions.create(
        model="m-vertex", messages=[{"role": "user", "content": "hello vertex"}]
    )
    assert "hello vertex" in (reply.choices[0].message.content or "")
    seen = providers.gemini.received[-1]
    assert (
        seen.path
        == "/v1/projects/my-project-1/locations/europe-west4/publishers/google/models/gemini-2.5-pro:generateContent"
    )
    assert seen.headers.get("authorization", seen.headers.get("Authorization")) == f"Bearer {GEMINI_KEY}"
    assert "x-goog-api-key" not in {name.lower() for name in seen.headers}


async def test_a_wrong_gemini_key_is_the_keys_fault_through_translation(providers: Providers, start_proxy) -> None:
    config = {**providers.config, "gemini-api-key": [{**providers.config["gemini-api-key"][0], "api-key": "bad"}]}
    running = await start_proxy(config)
    with pytest.raises(openai.InternalServerError) as caught:  # Google's 400 API_KEY_INVALID, read before it is dropped
        await running.client().chat.completions.create(model="m-gemini", messages=[{"role": "user", "content": "x"}])
    assert (caught.value.status_code, caught.value.code) == (502, "upstream_auth_error")
    with pytest.raises(openai.RateLimitError) as caught_again:
        await running.client().chat.completions.create(model="m-gemini", messages=[{"role": "user", "content": "x"}])
    assert caught_again.value.code == "model_cooldown"  # the key rests, as any refused key does
