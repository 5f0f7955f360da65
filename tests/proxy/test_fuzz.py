"""Hostile bodies, encodings, paths and headers for every inbound API and every target wire: never a 5xx.

Each example starts from a body every target serves and breaks it the way an attacker did (issue 11): a field
anywhere replaced by a value of another JSON type, dropped, or nested a thousand levels deep; a field of another
API added; huge numbers and NaN; a top level that is no object; invalid JSON or UTF-8; a lying Content-Encoding.
The proxy must answer each with a 2xx (the body was acceptable and the target served it) or a 4xx in the caller's
own error format, and log no unhandled error.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..support.gateway import APIS, ENCODERS, Api, Gateway, problem, running_gateway

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
NEST = "\x00nest\x00"  # stands for a deeply nested value in the body, spliced into the JSON text after dumping
DEPTH = st.sampled_from([1001, 5000])
#: Fields of one API or another, added where they do not belong or with the wrong type.
FOREIGN = ("tools", "stop", "top_p", "temperature", "max_tokens", "messages", "contents", "input", "prompt",
           "generationConfig", "thinking", "reasoning", "response_format", "stream_options", "tool_choice",
           "toolConfig", "systemInstruction", "system", "instructions", "n", "stop_sequences", "output_config",
           "max_output_tokens", "max_completion_tokens", "reasoning_effort", "parallel_tool_calls", "metadata",
           "thinkingConfig", "functionCall", "functionResponse", "tool_calls", "content", "role", "type",
           "model", "stream", "previous_response_id", "include", "text", "safetySettings")  # fmt: skip

Path_ = tuple[str | int, ...]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


# -- strategies -----------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([0, -1, 2**31, 2**63, 2**64, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 5e-324]),
    st.text(max_size=12), st.sampled_from(["NaN", "Infinity", "-inf", "1e999", "", "null", "true", "\ud800"]),
    st.sampled_from(['{"a":' + "[" * 300 + "]" * 300 + "}", "[" * 1000 + "]" * 1000, '{"query": 1e999}']),
)  # JSON text inside a string: tool arguments are parsed, and deep ones must not crash re-encoding  # fmt: skip
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8),
                      inner, max_size=3), max_leaves=6)  # fmt: skip


def _paths(value: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every place in a JSON document, its root excluded."""
    children: list[tuple[str | int, Any]] = []
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    found: list[Path_] = []
    for key, child in children:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


def _containers(value: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every object in a JSON document, the root included."""
    found = [prefix] if isinstance(value, dict) else []
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found.extend(_containers(child, (*prefix, key)))
    return found


def _at(document: Any, path: Path_) -> Any:
    for step in path:
        document = document[step]
    return document


def _different_type(original: Any) -> st.SearchStrategy[Any]:
    return values.filter(lambda v: type(v) is not type(original) or isinstance(original, (dict, list, str)))


@st.composite
def mutated(draw: st.DrawFn, seed: dict[str, Any]) -> Any:
    """The seed with one to three fields replaced, dropped, nested deep or added where they do not belong."""
    document = json.loads(json.dumps(seed))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "replace", "replace", "drop", "nest", "add"]))
        paths = _paths(document)
        if kind == "add" or not paths:
            where = _at(document, draw(st.sampled_from(_containers(document))))
            where[draw(st.sampled_from(FOREIGN))] = draw(values)
            continue
        path = draw(st.sampled_from(paths))
        parent, key = _at(document, path[:-1]), path[-1]
        if kind == "drop":
            del parent[key]
        elif kind == "nest":
            parent[key] = NEST
        else:
            parent[key] = draw(_different_type(parent[key]))
    return document


def _dumps(document: Any, nest: str) -> bytes:
    """JSON text as a hostile client writes it: NaN and Infinity allowed, lone surrogates kept."""
    text = json.dumps(document, allow_nan=True)
    return text.replace(json.dumps(NEST), nest).encode("utf-8", "surrogatepass")


def _nesting(depth: int, bracket: str) -> str:
    return '{"a":' * depth + "1" + "}" * depth if bracket == "{" else "[" * depth + "]" * depth


@st.composite
def hostile_body(draw: st.DrawFn, seed: dict[str, Any]) -> bytes:
    """A broken body: a mutated document, or bytes that are not a JSON object at all."""
    kind = draw(st.sampled_from(["mutated"] * 6 + ["top-level", "truncated", "bad-utf8", "empty", "deep-root"]))
    nest = _nesting(draw(DEPTH), draw(st.sampled_from("{[")))
    if kind == "mutated":
        return _dumps(draw(mutated(seed)), nest)
    valid = orjson.dumps(seed)
    if kind == "top-level":
        return _dumps(draw(values.filter(lambda v: not isinstance(v, dict))), nest)
    if kind == "truncated":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "bad-utf8":
        at = draw(st.integers(0, len(valid)))
        return (
            valid[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80"]))
            + valid[at:]
        )
    if kind == "deep-root":
        return nest.encode()
    return b""


@st.composite
def case(draw: st.DrawFn, api: Api) -> tuple[str, bytes]:
    model = draw(st.sampled_from(api.targets))
    stream = api.streams and draw(st.booleans())
    return api.path(model, stream), draw(hostile_body(api.seed(model, stream)))


def _verdict(api: Api, reply: Any, sent: bytes) -> None:
    trouble = problem(api, reply)
    assert trouble is None, f"{trouble}\nsent: {sent[:300]!r}"


# -- properties -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS.values(), ids=APIS.keys())
def test_seed_bodies_are_served_by_every_target(gateway: Gateway, api: Api) -> None:
    """The property below starts from these: each must be a body the target serves, or the mutations prove little."""
    for model in api.targets:
        for stream in (False, True) if api.streams else (False,):
            reply = gateway.send(api.path(model, stream), orjson.dumps(api.seed(model, stream)))
            assert reply.status == 200 or (api.name.endswith("count") and reply.status == 404), (model, reply)


@pytest.mark.parametrize("api", APIS.values(), ids=APIS.keys())
@FUZZ
@given(data=st.data())
def test_hostile_bodies_get_a_4xx_in_the_callers_format(gateway: Gateway, api: Api, data: st.DataObject) -> None:
    path, body = data.draw(case(api))
    _verdict(api, gateway.send(path, body), body)


def _as_is(body: bytes) -> bytes:
    return body


#: Content-Encoding header → what the body really is: encoded as it says, not encoded at all (a lie), or cut short.
ENCODINGS: list[tuple[str, Callable[[bytes], bytes]]] = [
    *ENCODERS.items(), ("GZIP", gzip.compress),
    ("gzip", _as_is), ("deflate", _as_is), ("br", _as_is), ("zstd", _as_is),
    ("gzip", lambda b: gzip.compress(b)[:-9]), ("identity", _as_is), ("compress", _as_is),
    ("gzip, gzip", gzip.compress), ("x-unknown", _as_is),
]  # fmt: skip


@pytest.mark.parametrize("api", APIS.values(), ids=APIS.keys())
@settings(FUZZ, max_examples=25)
@given(data=st.data())
def test_content_encodings_are_decoded_or_refused(gateway: Gateway, api: Api, data: st.DataObject) -> None:
    path, body = data.draw(case(api)) if data.draw(st.booleans()) else (api.path("m-gemini", False), b"")
    if not body:
        body = orjson.dumps(api.seed("m-gemini", False))
    header, encode = data.draw(st.sampled_from(ENCODINGS))
    reply = gateway.send(path, encode(body), {"Content-Encoding": header})
    _verdict(api, reply, body)


path_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@settings(FUZZ, max_examples=80)
@given(tail=path_text, action=st.sampled_from(["", ":generateContent", ":streamGenerateContent", ":countTokens",
                                               ":embedContent", ":"]), query=path_text,
       prefix=st.sampled_from(["/v1beta/models/", "/v1/models/"]))  # fmt: skip
def test_gemini_path_tails_and_query_strings(gateway: Gateway, tail: str, action: str, query: str,
                                             prefix: str) -> None:  # fmt: skip
    api = APIS["gemini-generate"]
    body = orjson.dumps(api.seed("m-gemini", False))
    path = prefix + quote(tail, safe=":/@!$&'()*+,;=") + action + "?" + quote(query, safe="=&:/")
    reply = gateway.send(path, body)
    if prefix == "/v1/models/" and ":" not in path.partition("?")[0]:
        api = APIS["openai-chat"]  # without an action it is OpenAI's model lookup, and answers in its format
    _verdict(api, reply, path.encode())


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@pytest.mark.parametrize("api", APIS.values(), ids=APIS.keys())
@settings(FUZZ, max_examples=25)
@given(data=st.data(), headers=st.dictionaries(
    st.sampled_from(["anthropic-version", "anthropic-beta", "Content-Type", "Accept", "Accept-Encoding",
                     "x-goog-api-client", "OpenAI-Beta", "x-stainless-retry-count", "Authorization", "X-Api-Key",
                     "x-goog-api-key", "Idempotency-Key"]), header_text, max_size=3))  # fmt: skip
def test_garbage_headers(gateway: Gateway, api: Api, data: st.DataObject, headers: dict[str, str]) -> None:
    model = data.draw(st.sampled_from(api.targets))
    body = orjson.dumps(api.seed(model, False))
    reply = gateway.send(api.path(model, False), body, headers)
    _verdict(api, reply, repr(headers).encode())
