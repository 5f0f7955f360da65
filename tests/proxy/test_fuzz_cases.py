"""The concrete bodies of issue 11 that each answered ``500 internal_error``: now a 4xx in the caller's format.

Wrong types in ``tools``, ``stop``, ``top_p`` and ``generationConfig``, deep nesting, and a ``Content-Encoding``
that lies, each sent to a pass-through target and to translating ones; plus the encodings that must still work.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from ..support.gateway import APIS, ENCODERS, MAX_BODY, TARGETS, Api, Gateway, Reply, problem, running_gateway

DEEP = 1001  # orjson reads up to 1024 levels, but writes only 254 and Python recurses 1000 deep


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("fuzz-cases")) as running:
        yield running


def _deep_json(body: dict[str, Any], key: str) -> bytes:
    """``body`` with ``key`` nested ``DEEP`` levels, written by hand: orjson refuses to write it."""
    text = orjson.dumps({**body, key: "DEEP"}).decode()
    return text.replace('"DEEP"', "[" * DEEP + "]" * DEEP).encode()


def _send(gateway: Gateway, api: Api, model: str, body: bytes, headers: dict[str, str] | None = None) -> Reply:
    reply = gateway.send(api.path(model, False), body, headers)
    trouble = problem(api, reply)
    assert trouble is None, trouble
    return reply


def _with(api: Api, model: str, **fields: Any) -> bytes:
    return orjson.dumps({**api.seed(model, False), **fields})


#: The target each API reaches without translation: its vendor (here, the fake) judges the body.
PASSED_THROUGH = {"openai-chat": "m-openai", "openai-completions": "m-openai", "anthropic-messages": "m-anthropic",
                  "gemini-generate": "m-gemini", "openai-responses": "m-responses"}  # fmt: skip
WRONG_TYPES = [
    ("openai-chat", {"tools": "get_weather"}, "tools"),
    ("openai-chat", {"stop": 7}, "stop"),
    ("openai-chat", {"top_p": "0.9"}, "top_p"),
    ("openai-chat", {"max_tokens": [64]}, "max_tokens"),
    ("openai-completions", {"stop": True}, "stop"),
    ("anthropic-messages", {"tools": {"name": "x"}}, "tools"),
    ("anthropic-messages", {"top_p": "high"}, "top_p"),
    ("anthropic-messages", {"max_tokens": {"n": 64}}, "max_tokens"),
    ("anthropic-count", {"tools": "get_weather"}, "tools"),
    ("gemini-generate", {"generationConfig": [{"temperature": 0.5}]}, "generationConfig"),
    ("gemini-generate", {"tools": [{"functionDeclarations": [["get_weather"]]}]}, "tools"),
    ("gemini-count", {"generationConfig": ["x"], "tools": 3}, ""),
    ("openai-responses", {"max_output_tokens": {"n": 64}}, "max_output_tokens"),
    ("openai-responses", {"tools": [{"type": "function", "name": "f", "parameters": {"properties": []}}]}, ""),
]


@pytest.mark.parametrize(("api_name", "fields", "named"), WRONG_TYPES)
def test_wrong_types_are_a_400_naming_the_field(gateway: Gateway, api_name: str, fields: dict[str, Any],
                                                named: str) -> None:  # fmt: skip
    api = APIS[api_name]
    for model in api.targets:
        reply = _send(gateway, api, model, _with(api, model, **fields))  # passed through: the vendor judges it
        if named and model != PASSED_THROUGH.get(api_name):  # translated: the proxy read the field, and names it
            assert 400 <= reply.status < 500, (model, reply)
            assert reply.status != 400 or named.encode() in reply.body, (model, reply)


@pytest.mark.parametrize("api", APIS.values(), ids=APIS.keys())
@pytest.mark.parametrize("key", ["tools", "metadata", "messages", "contents", "input"])
def test_nesting_a_thousand_levels_deep(gateway: Gateway, api: Api, key: str) -> None:
    """A 400 where the proxy reads the field; where it does not (an ignored key), the target may answer."""
    for model in api.targets:
        reply = _send(gateway, api, model, _deep_json(api.seed(model, False), key))
        if key in api.seed(model, False) and model != PASSED_THROUGH.get(api.name):
            assert reply.status == 400, (model, reply)


@pytest.mark.parametrize("model", TARGETS)
def test_tool_arguments_whose_json_nests_deep(gateway: Gateway, model: str) -> None:
    """Arguments are JSON text the encoders for Anthropic, Gemini and Kiro parse and write again as an object."""
    api = APIS["openai-chat"]
    body = api.seed(model, False)
    body["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"a":' + "[" * 500 + "]" * 500 + "}"
    reply = _send(gateway, api, model, orjson.dumps(body))
    if model in ("m-anthropic", "m-gemini", "m-vertex", "m-kiro"):
        assert reply.status == 400 and b"nested more than 64 levels" in reply.body, reply


@pytest.mark.parametrize("api", APIS.values(), ids=APIS.keys())
def test_nesting_deeper_than_orjson_reads_is_invalid_json(gateway: Gateway, api: Api) -> None:
    body = b'{"model": "m-gemini", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    reply = _send(gateway, api, "m-gemini", body)
    assert reply.status == 400 and b"not valid JSON" in reply.body


def test_a_tool_schema_nested_deeper_than_translation_allows(gateway: Gateway) -> None:
    api = APIS["openai-chat"]
    schema: dict[str, Any] = {"type": "object", "properties": {}}
    for _ in range(100):
        schema = {"type": "object", "properties": {"inner": schema}}
    tool = {"type": "function", "function": {"name": "deep", "parameters": schema}}
    reply = _send(gateway, api, "m-gemini", _with(api, "m-gemini", tools=[tool]))
    assert reply.status == 400 and b"nested more than 64 levels" in reply.body


@pytest.mark.parametrize(
    "api",
    [APIS["openai-chat"], APIS["anthropic-messages"], APIS["openai-responses"]],
    ids=["openai-chat", "anthropic-messages", "openai-responses"],
)
def test_a_schema_whose_refs_multiply_is_a_400_not_a_stall(gateway: Gateway, api: Api) -> None:
    """Forty definitions that each refer to the next twice: 2**40 nodes once inlined for Gemini."""
    defs: dict[str, Any] = {
        f"d{i}": {
            "type": "object",
            "properties": {"a": {"$ref": f"#/$defs/d{i + 1}"}, "b": {"$ref": f"#/$defs/d{i + 1}"}},
        }
        for i in range(40)
    }
    defs["d40"] = {"type": "string"}
    schema = {"type": "object", "properties": {"x": {"$ref": "#/$defs/d0"}}, "$defs": defs}
    tool: dict[str, Any] = {
        "openai-chat": {"type": "function", "function": {"name": "f", "parameters": schema}},
        "anthropic-messages": {"name": "f", "input_schema": schema},
        "openai-responses": {"type": "function", "name": "f", "parameters": schema},
    }[api.name]
    for model in ("m-gemini", "m-vertex"):
        reply = _send(gateway, api, model, _with(api, model, tools=[tool]))
        assert reply.status == 400 and b"10000 nodes" in reply.body, reply


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
@pytest.mark.parametrize("api", APIS.values(), ids=APIS.keys())
def test_encoded_bodies_are_decoded(gateway: Gateway, api: Api, encoding: str) -> None:
    model = "m-gemini"
    reply = _send(gateway, api, model, ENCODERS[encoding](orjson.dumps(api.seed(model, False))),
                  {"Content-Encoding": encoding})  # fmt: skip
    assert reply.status == 200, reply


@pytest.mark.parametrize("encoding", [*sorted(ENCODERS), "x-gzip"])
@pytest.mark.parametrize("api", APIS.values(), ids=APIS.keys())
def test_a_content_encoding_that_lies_is_a_400(gateway: Gateway, api: Api, encoding: str) -> None:
    plain = orjson.dumps(api.seed("m-gemini", False))
    reply = _send(gateway, api, "m-gemini", plain, {"Content-Encoding": encoding})
    assert reply.status == 400 and b"as its Content-Encoding says" in reply.body


@pytest.mark.parametrize("api", APIS.values(), ids=APIS.keys())
def test_a_truncated_gzip_body_is_a_400(gateway: Gateway, api: Api) -> None:
    whole = gzip.compress(orjson.dumps(api.seed("m-gemini", False)))
    reply = _send(gateway, api, "m-gemini", whole[:-4], {"Content-Encoding": "gzip"})
    assert reply.status == 400 and b"as its Content-Encoding says" in reply.body


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_a_decompression_bomb_stops_at_the_body_limit(gateway: Gateway, encoding: str) -> None:
    api = APIS["openai-chat"]
    padded = orjson.dumps({**api.seed("m-openai", False), "user": " " * MAX_BODY})
    bomb = ENCODERS[encoding](padded)
    assert len(bomb) < MAX_BODY // 100  # small on the wire
    reply = _send(gateway, api, "m-openai", bomb, {"Content-Encoding": encoding})
    assert reply.status == 413 and b"once decoded" in reply.body


@pytest.mark.parametrize("encoding", ["compress", "gzip, gzip", "identity, gzip", "exi", "*"])
def test_unsupported_encodings_are_a_415(gateway: Gateway, encoding: str) -> None:
    api = APIS["anthropic-messages"]
    reply = _send(gateway, api, "m-anthropic", _with(api, "m-anthropic"), {"Content-Encoding": encoding})
    assert reply.status == 415 and b"Unsupported Content-Encoding" in reply.body


@pytest.mark.parametrize("model", TARGETS)
@pytest.mark.parametrize("version", ["", "garbage", "2023-06-01\t;", "9" * 500])
def test_anthropic_version_garbage(gateway: Gateway, model: str, version: str) -> None:
    api = APIS["anthropic-messages"]
    reply = _send(gateway, api, model, _with(api, model), {"anthropic-version": version})
    assert reply.status < 500


@pytest.mark.parametrize(
    "tail",
    [
        "%ZZ:generateContent",
        "m-gemini:generateContent:x",
        ":generateContent",
        "m-gemini%00:generateContent",
        "../../v1/chat/completions:generateContent",
        "m-gemini:countTokens?alt=%FF",
        "m-gemini:streamGenerateContent?alt=json",
    ],
)
def test_gemini_path_tails(gateway: Gateway, tail: str) -> None:  # fmt: skip
    api = APIS["gemini-generate"]
    reply = gateway.send(f"/v1beta/models/{tail}", _with(api, "m-gemini"))
    assert problem(api, reply) is None, reply
