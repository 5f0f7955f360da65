"""``POST /v1/embeddings`` through the proxy with the real openai SDK: OpenAI-shaped providers and Gemini."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cliproxy_proxy.demo_upstream import Fault
from cliproxy_proxy.embeddings import USAGE_HEADER
from cliproxy_proxy.translate.canonical import TranslationError
from cliproxy_proxy.translate.embeddings import GeminiEmbeddings, decode_request

from ..fakes.anthropic_upstream import DEFAULT_KEY as ANTHROPIC_KEY
from ..fakes.anthropic_upstream import start_anthropic
from ..fakes.gemini_upstream import GEMINI_KEY, GeminiFault, start_gemini
from ..support.proxy import CLIENT_KEY, FakeProvider, base_config, compat_block

TEXTS = ["hello embeddings", "a second text"]


def openai_config(provider: FakeProvider, **block: Any) -> dict[str, Any]:
    return base_config(**{"openai-compatibility": [compat_block(provider.url, **block)]})


def tokens_counted(proxy: Any, provider: str, model: str) -> float | None:
    labels = {"provider": provider, "model": model, "type": "input"}
    value: float | None = proxy.metrics.registry.get_sample_value("cliproxy_tokens_total", labels)
    return value


async def test_openai_provider_passes_embeddings_through_under_the_alias(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(openai_config(provider))
    client = running.client()
    floats = await client.embeddings.create(model="small", input=TEXTS, encoding_format="float", dimensions=4)
    packed = await client.embeddings.create(model="small", input=TEXTS)  # the SDK asks for base64 and unpacks it
    assert floats.model == "small"
    assert [d.index for d in floats.data] == [0, 1]
    assert all(len(d.embedding) == 4 for d in floats.data)
    assert [len(d.embedding) for d in packed.data] == [8, 8]
    assert [d.embedding[:4] for d in packed.data] == [d.embedding for d in floats.data]
    assert floats.usage.prompt_tokens == 5
    sent = provider.received[-1]
    assert sent.path == "/v1/embeddings"
    assert sent.body["model"] == "up-small"
    assert sent.body["encoding_format"] == "base64"
    assert tokens_counted(running.proxy, "fake", "small") == 10


async def test_prefixed_model_and_token_arrays_pass_through(provider: FakeProvider, start_proxy) -> None:
    client = (await start_proxy(openai_config(provider, prefix="team"))).client()
    answer = await client.embeddings.create(model="team/small", input=[[1, 2, 3], [4]], encoding_format="float")
    assert len(answer.data) == 2
    assert answer.model == "team/small"
    assert provider.received[-1].body["input"] == [[1, 2, 3], [4]]


async def test_a_failing_credential_fails_over_to_the_next(provider: FakeProvider, start_proxy) -> None:
    client = (await start_proxy(openai_config(provider, keys=("key-a", "key-b")))).client()
    provider.state.fail_next("key-a", Fault(status=503))
    answer = await client.embeddings.create(model="small", input="fail over", encoding_format="float")
    assert len(answer.data) == 1
    assert [r.key for r in provider.received] == ["key-a", "key-b"]


async def test_embeddings_need_a_client_key(provider: FakeProvider, start_proxy) -> None:
    client = (await start_proxy(openai_config(provider))).client(key="wrong")
    with pytest.raises(openai.AuthenticationError):
        await client.embeddings.create(model="small", input="x")
    assert provider.received == []


@pytest.mark.parametrize(
    "body",
    [
        {"model": "small"},
        {"model": "small", "input": []},
        {"model": "small", "input": ""},
        {"model": "small", "input": ["a", 1]},
        {"model": "small", "input": [[1, -2]]},
        {"model": "small", "input": [True]},
        {"model": "small", "input": {"text": "a"}},
        {"model": "small", "input": ["a"] * 2049},
        {"model": "small", "input": "a", "dimensions": "8"},
        {"model": "small", "input": "a", "dimensions": 0},
        {"model": "small", "input": "a", "encoding_format": "hex"},
        {"model": "small", "input": "a", "user": 7},
        {"input": "a"},
        {"model": ["small"], "input": "a"},
    ],
)
async def test_malformed_bodies_are_openai_400s(body: dict[str, Any], provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(openai_config(provider))
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        async with session.post(f"{running.url}/v1/embeddings", json=body, headers=headers) as response:
            assert response.status == 400
            error = (await response.json())["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert provider.received == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["input", "dimensions", "encoding_format", "user", "model"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
            lambda inner: st.lists(inner, max_size=3),
            max_leaves=8,
        ),
    )
)
def test_any_json_body_decodes_or_is_the_clients_error(body: dict[str, Any]) -> None:
    """A wrong body is a TranslationError (the client's 400); a right one holds texts or token arrays, not both."""
    try:
        request = decode_request(body)
    except TranslationError:
        return
    assert bool(request.texts) != bool(request.tokens)
    assert request.encoding in ("float", "base64")
    assert request.dimensions is None or request.dimensions >= 1


@pytest.fixture
async def gemini(aiohttp_server) -> tuple[Any, dict[str, Any]]:
    state, url = await start_gemini(aiohttp_server)
    config = base_config(**{
        "gemini-api-key": [{"api-key": "gemini-bad", "base-url": url, "priority": 1,
                            "models": [{"name": "gemini-embedding-001", "alias": "m-embed"}]},
                           {"api-key": GEMINI_KEY, "base-url": url,
                            "models": [{"name": "gemini-embedding-001", "alias": "m-embed"}]}],
    })  # fmt: skip
    return state, config


async def test_gemini_serves_embeddings_through_batch_embed_contents(gemini, start_proxy) -> None:
    state, config = gemini
    config["gemini-api-key"] = config["gemini-api-key"][1:]
    running = await start_proxy(config)
    client = running.client()
    raw = await client.embeddings.with_raw_response.create(
        model="m-embed", input=TEXTS, encoding_format="float", dimensions=16
    )
    floats = raw.parse()
    packed = await client.embeddings.create(model="m-embed", input=TEXTS, dimensions=16)
    assert raw.headers[USAGE_HEADER] == "estimated"
    assert floats.model == "m-embed"
    assert [len(d.embedding) for d in floats.data] == [16, 16]
    assert [d.embedding for d in packed.data] == [d.embedding for d in floats.data]
    assert floats.usage.prompt_tokens > 0
    sent = state.last
    assert sent.action == "batchEmbedContents"
    assert [r["model"] for r in sent.body["requests"]] == ["models/gemini-embedding-001"] * 2
    assert [r["content"]["parts"][0]["text"] for r in sent.body["requests"]] == TEXTS
    assert {r["outputDimensionality"] for r in sent.body["requests"]} == {16}
    assert tokens_counted(running.proxy, "gemini-api-key", "m-embed") == 2 * floats.usage.prompt_tokens


async def test_gemini_embeddings_fail_over_from_a_refused_key(gemini, start_proxy) -> None:
    state, config = gemini
    client = (await start_proxy(config)).client()
    answer = await client.embeddings.create(model="m-embed", input="x", encoding_format="float")
    assert len(answer.data[0].embedding) == 768
    assert [r.key for r in state.received] == ["gemini-bad", GEMINI_KEY]


async def test_gemini_refuses_token_arrays_in_openai_format(gemini, start_proxy) -> None:
    state, config = gemini
    client = (await start_proxy(config)).client()
    with pytest.raises(openai.BadRequestError, match="token arrays"):
        await client.embeddings.create(model="m-embed", input=[[1, 2]])
    assert state.received == []


async def test_a_model_whose_providers_do_not_embed_is_a_404(aiohttp_server, start_proxy) -> None:
    claude, url = await start_anthropic(aiohttp_server)
    block = {"api-key": ANTHROPIC_KEY, "base-url": url, "models": [{"name": "claude-sonnet-4-6", "alias": "m"}]}
    config = base_config(**{"claude-api-key": [block]})
    client = (await start_proxy(config)).client()
    with pytest.raises(openai.NotFoundError, match="do not serve embeddings"):
        await client.embeddings.create(model="m", input="x")
    assert claude.received == []


async def test_a_provider_without_embeddings_rests_only_that_endpoint(provider: FakeProvider, start_proxy) -> None:
    client = (await start_proxy(openai_config(provider))).client()
    unknown = {"error": {"message": "Unknown request URL: POST /v1/embeddings.", "type": "invalid_request_error",
                         "param": None, "code": "unknown_url"}}  # fmt: skip
    provider.state.fail_next("*", Fault(status=404, body=unknown))
    with pytest.raises(openai.NotFoundError, match="Unknown request URL"):
        await client.embeddings.create(model="small", input="x")
    completion = await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "echo: hi"  # chat through the same credential is untouched
    asked = len(provider.received)
    with pytest.raises(openai.NotFoundError, match="does not serve this endpoint"):
        await client.embeddings.create(model="small", input="x")
    assert len(provider.received) == asked  # known: not asked again


async def test_gemini_takes_at_most_a_batch_of_texts(gemini, start_proxy) -> None:
    state, config = gemini
    client = (await start_proxy(config)).client()
    with pytest.raises(openai.BadRequestError, match="at most 100"):
        await client.embeddings.create(model="m-embed", input=["x"] * 101)
    assert state.received == []


async def test_gemini_refusing_the_request_answers_in_openai_format(gemini, start_proxy) -> None:
    state, config = gemini
    config["gemini-api-key"] = config["gemini-api-key"][1:]
    client = (await start_proxy(config)).client()
    state.fail_next(GEMINI_KEY, GeminiFault(status=400, message="Request payload size exceeds the limit."))
    with pytest.raises(openai.BadRequestError, match="payload size exceeds") as caught:
        await client.embeddings.create(model="m-embed", input="x")
    assert caught.value.code == "upstream_error"


@pytest.mark.parametrize(
    "answer",
    [b'{"embeddings":[{"values":[1e300]}]}', b'{"embeddings":[{"values":["1"]}]}', b'{"embeddings":[]}', b"[]"],
)
def test_a_broken_gemini_answer_is_a_bad_response_not_a_crash(answer: bytes) -> None:
    """The exchange turns these errors into a failover (bad_response); any other exception would be a 500."""
    request = decode_request({"model": "m", "input": "x", "encoding_format": "base64"})
    with pytest.raises((ValueError, KeyError, TypeError)):
        GeminiEmbeddings().decode(answer, request, "m")
