"""Azure OpenAI and Vertex AI (Gemini, Claude through rawPredict, predict embeddings) behind the proxy, called with
the openai, anthropic and google-genai SDKs: text, a streamed tool call, an image; embeddings with the openai SDK.

The upstreams are strict fakes (``tests/fakes/azure_openai.py``, ``vertex.py``): Azure checks api-version, its
``api-key`` header or an Entra token, and the body against the openai SDK's request types; Vertex accepts only
access tokens its Google token endpoint issued (and refuses them once expired), and Claude bodies only in Vertex's
shape. The Entra token endpoint is served over TLS, trusted through ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from google import genai
from google.genai import types

from ..fakes.anthropic_upstream import Fault as AnthropicFault
from ..fakes.anthropic_upstream import sign
from ..fakes.azure_openai import API_KEY, AzureOpenAI, Entra, serve_entra, start_azure, trusted_tls
from ..fakes.google_identity import start_google_identity
from ..fakes.vertex import Vertex, start_vertex
from ..support.proxy import CLIENT_KEY, base_config, eventually

IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CLAUDE = "claude-sonnet-4-5@20250929"
PROJECT = "/v1/projects/demo-project/locations/us-central1/publishers"


@dataclass
class Clouds:
    azure: AzureOpenAI
    entra: Entra
    vertex: Vertex
    config: dict[str, Any]


@pytest.fixture
def server_tls(monkeypatch: pytest.MonkeyPatch) -> Iterator[ssl.SSLContext]:
    with trusted_tls(monkeypatch) as context:
        yield context


@pytest.fixture
async def clouds(aiohttp_server, server_tls: ssl.SSLContext, tmp_path: Path) -> AsyncIterator[Clouds]:
    identity = await start_google_identity(aiohttp_server)
    vertex = await start_vertex(aiohttp_server, identity)
    (tmp_path / "sa.json").write_text(json.dumps(identity.key_file()))
    async with serve_entra(server_tls) as entra:
        azure, azure_url = await start_azure(aiohttp_server, entra=entra)
        entra_block = {"tenant-id": entra.tenant, "client-id": entra.client_id, "client-secret": entra.client_secret,
                       "authority": entra.url}  # fmt: skip
        config = base_config(**{
            "azure-openai": [
                {"base-url": azure_url, "api-key": API_KEY, "api-version": "2024-10-21",
                 "models": [{"name": "chat-prod", "alias": "m-azure"}, {"name": "embed", "alias": "e-azure"}]},
                {"base-url": azure_url, "api": "v1", "entra": entra_block,
                 "models": [{"name": "chat-prod", "alias": "m-azure-v1"}]},
            ],
            "vertex-api-key": [
                {"service-account-file": str(tmp_path / "sa.json"), "project": "demo-project", "base-url": vertex.url,
                 "models": [{"name": CLAUDE, "alias": "m-claude"}, {"name": "gemini-2.5-flash", "alias": "m-gemini"},
                            {"name": "text-embedding-005", "alias": "e-vertex"}]},
            ],
        })  # fmt: skip
        yield Clouds(azure, entra, vertex, config)


def sent(clouds: Clouds, model: str) -> list[Any]:
    """What the upstream behind ``model`` received (path, headers, body)."""
    if model.startswith("m-azure"):
        return [(r.path + (f"?api-version={r.query['api-version']}" if r.query else ""), r.headers, r.body)
                for r in clouds.azure.received]  # fmt: skip
    if model == "m-claude":
        return [(r.path, r.headers, r.body) for r in clouds.vertex.claude.received]
    return [(r.path, r.headers, r.body) for r in clouds.vertex.gemini.received]


def image_reached(body: Any) -> bool:
    return IMAGE in json.dumps(body)


TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": SCHEMA}}


@pytest.mark.parametrize("model", ["m-azure", "m-azure-v1", "m-claude"])
async def test_openai_sdk(model: str, clouds: Clouds, start_proxy) -> None:
    client = (await start_proxy(clouds.config)).client()
    history: list[Any] = [{"role": "user", "content": [
        {"type": "text", "text": "hello cloud"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE}"}}]}]  # fmt: skip
    first = await client.chat.completions.create(model=model, messages=history)
    assert "hello cloud" in (first.choices[0].message.content or "")
    assert first.model == ("gpt-4o" if model.startswith("m-azure") else model)  # Azure names the deployment's model
    assert first.usage is not None and first.usage.prompt_tokens > 0
    assert image_reached(sent(clouds, model)[-1][2])
    stream = await client.chat.completions.create(model=model, messages=[*history[:0], {"role": "user",
                                                  "content": "Paris"}], tools=[TOOL], stream=True)  # fmt: skip
    pieces: list[str] = []
    name = None
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                name = name or (call.function.name if call.function else None)
                pieces.append((call.function.arguments if call.function else None) or "")
    assert name == "get_weather" and json.loads("".join(pieces)) == {"city": "Paris"}
    path, headers, body = sent(clouds, model)[-1]
    if model == "m-azure":
        assert path == "/openai/deployments/chat-prod/chat/completions?api-version=2024-10-21"
        assert headers["api-key"] == API_KEY and "authorization" not in headers
    elif model == "m-azure-v1":
        assert path == "/openai/v1/chat/completions" and body["model"] == "chat-prod"
        assert clouds.entra.valid(headers["authorization"].removeprefix("Bearer ")) and "api-key" not in headers
        assert clouds.entra.grants == ["secret"]  # one token, reused
    else:
        assert path == f"{PROJECT}/anthropic/models/{CLAUDE}:streamRawPredict"
        assert "model" not in body and body["anthropic_version"] == "vertex-2023-10-16"
    assert not clouds.azure.refused and not clouds.vertex.claude.invalid


@pytest.mark.parametrize("model", ["m-azure", "m-claude"])
async def test_anthropic_sdk(model: str, clouds: Clouds, start_proxy) -> None:
    running = await start_proxy(clouds.config)
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=CLIENT_KEY, max_retries=0)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE}}
    reply = await client.messages.create(model=model, max_tokens=256, messages=[
        {"role": "user", "content": [{"type": "text", "text": "hello cloud"}, image]}])  # fmt: skip
    assert reply.content[0].type == "text" and "hello cloud" in reply.content[0].text
    assert image_reached(sent(clouds, model)[-1][2])
    tool = {"name": "get_weather", "description": "Weather", "input_schema": SCHEMA}
    async with client.messages.stream(model=model, max_tokens=256, tools=[tool],  # type: ignore[list-item]
                                      messages=[{"role": "user", "content": "Paris"}]) as stream:  # fmt: skip
        final = await stream.get_final_message()
    calls = [block for block in final.content if block.type == "tool_use"]
    assert [(c.name, c.input) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("model", ["m-azure-v1", "m-claude", "m-gemini"])
async def test_google_genai_sdk(model: str, clouds: Clouds, start_proxy) -> None:
    running = await start_proxy(clouds.config)
    client = genai.Client(api_key=CLIENT_KEY, http_options=types.HttpOptions(base_url=running.url))
    image = types.Part.from_bytes(data=__import__("base64").b64decode(IMAGE), mime_type="image/png")
    reply = await client.aio.models.generate_content(model=model, contents=["hello cloud", image])
    assert "hello cloud" in (reply.text or "")
    assert image_reached(sent(clouds, model)[-1][2])
    declaration = types.FunctionDeclaration(name="get_weather", description="Weather", parameters_json_schema=SCHEMA)
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[declaration])])
    calls = []
    async for chunk in await client.aio.models.generate_content_stream(model=model, contents="Paris", config=config):
        calls += chunk.function_calls or []
    assert [(c.name, c.args) for c in calls] == [("get_weather", {"city": "Paris"})]


@pytest.mark.parametrize(("model", "path"), [
    ("e-azure", "/openai/deployments/embed/embeddings?api-version=2024-10-21"),
    ("e-vertex", f"{PROJECT}/google/models/text-embedding-005:predict"),
])  # fmt: skip
async def test_embeddings_with_the_openai_sdk(model: str, path: str, clouds: Clouds, start_proxy) -> None:
    client = (await start_proxy(clouds.config)).client()
    answer = await client.embeddings.create(model=model, input=["one text", "two more words"], dimensions=8,
                                            encoding_format="float")  # fmt: skip
    assert [len(d.embedding) for d in answer.data] == [8, 8]
    assert answer.model == ("text-embedding-3-small" if model == "e-azure" else model)  # Azure's own, passed through
    assert answer.usage.prompt_tokens == 5  # the provider's own count (words, in the fakes)
    if model == "e-azure":
        received = clouds.azure.received[-1]
        assert f"{received.path}?api-version={received.query['api-version']}" == path
    else:
        received = clouds.vertex.gemini.received[-1]
        assert received.path == path and received.body["instances"] == [{"content": "one text"},
                                                                          {"content": "two more words"}]  # fmt: skip


async def test_vertex_tokens_are_refreshed_once_they_expire(aiohttp_server, start_proxy, tmp_path: Path) -> None:
    """The token endpoint issues half-second tokens and Vertex refuses expired ones: every request still succeeds."""
    identity = await start_google_identity(aiohttp_server, lifetime=0.5)
    vertex = await start_vertex(aiohttp_server, identity)
    (tmp_path / "sa.json").write_text(json.dumps(identity.key_file()))
    block = {"service-account-file": "sa.json", "project": "demo-project", "base-url": vertex.url,
             "models": [{"name": CLAUDE, "alias": "m-claude"}]}  # fmt: skip
    client = (await start_proxy(base_config(**{"vertex-api-key": [block]}), secrets_dir=tmp_path)).client()
    messages: Any = [{"role": "user", "content": "first"}]
    await client.chat.completions.create(model="m-claude", messages=messages)
    first = vertex.claude.received[-1].headers["authorization"]
    await eventually(lambda: not identity.valid(first.removeprefix("Bearer ")), within=30.0)
    reply = await client.chat.completions.create(model="m-claude", messages=[{"role": "user", "content": "again"}])
    assert "again" in (reply.choices[0].message.content or "")
    assert vertex.claude.received[-1].headers["authorization"] != first
    assert identity.grants >= 2 and not identity.refusals  # (a stalled loop may meet a 401 first: it retries)


async def test_azure_refuses_a_wrong_key_as_an_auth_failure(clouds: Clouds, start_proxy) -> None:
    azure = clouds.config["azure-openai"][0]
    config = {**clouds.config, "azure-openai": [{**azure, "api-key": "not-the-key"}]}
    client = (await start_proxy(config)).client()
    with pytest.raises(openai.APIStatusError) as raised:
        await client.chat.completions.create(model="m-azure", messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 502 and "not-the-key" not in raised.value.response.text
    assert clouds.azure.refused == ["auth: key"]


async def test_the_azure_fake_refuses_what_azure_refuses(aiohttp_server) -> None:
    """The fake's strictness is what the tests above lean on: each of these would pass a broken proxy otherwise."""
    azure, url = await start_azure(aiohttp_server)
    body = {"messages": [{"role": "user", "content": "x"}]}
    chat = f"{url}/openai/deployments/chat-prod/chat/completions"
    async with aiohttp.ClientSession() as http:
        cases = [
            (chat, {"api-key": API_KEY}, body, 404),  # no api-version
            (f"{chat}?api-version=v1", {"api-key": API_KEY}, body, 400),  # not a date
            (f"{chat}?api-version=2024-10-21", {"api-key": "nope"}, body, 401),
            (f"{chat}?api-version=2024-10-21", {"Authorization": "Bearer forged"}, body, 401),
            (f"{chat}?api-version=2024-10-21", {"api-key": API_KEY}, {"messages": "x"}, 400),  # not the SDK's shape
            (f"{url}/openai/v1/chat/completions", {"api-key": API_KEY}, {**body, "model": "nope"}, 404),
            (f"{chat}?api-version=2024-10-21", {"api-key": API_KEY}, body, 200),
        ]
        for target, headers, payload, status in cases:
            async with http.post(target, json=payload, headers=headers) as response:
                document = await response.json()
                assert response.status == status, (target, headers, document)
                assert status == 200 or set(document["error"]) == {"code", "message"}
    assert len(azure.refused) == 6


async def test_claude_on_vertex_keeps_an_anthropic_clients_signed_thinking(clouds: Clouds, start_proxy) -> None:
    """Mid tool loop with thinking on, Claude needs its own signed thinking back: the body is re-encoded for Vertex,
    but it is still Claude's format, so the signature travels (another vendor's codec would drop it)."""
    running = await start_proxy(clouds.config)
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=CLIENT_KEY, max_retries=0)
    thought = "The user wants the weather; call the tool."
    tool = {"name": "get_weather", "description": "Weather", "input_schema": SCHEMA}
    messages: Any = [
        {"role": "user", "content": "Paris"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": thought, "signature": sign(thought)},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ]  # fmt: skip
    await client.messages.create(model="m-claude", max_tokens=4096, tools=[tool], messages=messages,  # type: ignore[list-item]
                                 thinking={"type": "enabled", "budget_tokens": 2048})  # fmt: skip
    received = clouds.vertex.claude.received[-1]
    assert received.problem is None and received.body["thinking"]["type"] == "enabled"
    assert received.body["messages"][1]["content"][0] == {"type": "thinking", "thinking": thought,
                                                          "signature": sign(thought)}  # fmt: skip


async def test_claude_on_vertex_errors_are_read_as_claudes(clouds: Clouds, start_proxy) -> None:
    """Anthropic's "prompt is too long" from Claude on Vertex is a context-window refusal (a fallback takes it), not
    the plain 400 the Gemini side of the same entry would make of it."""
    clouds.vertex.claude.fail_next(AnthropicFault(status=400, message="prompt is too long: 250000 tokens > 200000"))
    client = (await start_proxy({**clouds.config, "fallbacks": {"m-claude": ["m-gemini"]}})).client()
    reply = await client.chat.completions.create(model="m-claude", messages=[{"role": "user", "content": "long"}])
    assert "long" in (reply.choices[0].message.content or "")
    assert clouds.vertex.gemini.received[-1].model == "gemini-2.5-flash"
