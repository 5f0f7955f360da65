"""OpenAI's embeddings API (``POST /v1/embeddings``) and the upstream wires that serve it.

Clients speak OpenAI's shape. An OpenAI-shaped provider takes the body as sent (the model id aside); Gemini takes
``batchEmbedContents``, one request per input, and its answer is turned back into OpenAI's list. Each translated
wire is one class here, so the exchange names none of them.
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from .canonical import TranslationError
from .fields import integer, text

#: OpenAI refuses more inputs than this in one request; so does the proxy, before any provider is asked.
MAX_INPUTS = 2048
ENCODINGS = ("float", "base64")
#: Gemini's ``batchEmbedContents`` takes at most this many requests.
GEMINI_BATCH = 100


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    """A client's embeddings request, checked: texts or token arrays (never both), and the output it wants."""

    texts: tuple[str, ...]
    tokens: tuple[tuple[int, ...], ...]
    dimensions: int | None
    encoding: str


def decode_request(payload: dict[str, Any]) -> EmbeddingsRequest:
    """The request's fields in OpenAI's terms; any other shape is the client's error (a 400)."""
    texts, tokens = _inputs(payload.get("input"))
    dimensions = integer(payload.get("dimensions"), "dimensions")
    if dimensions is not None and dimensions < 1:
        raise TranslationError("dimensions: must be at least 1")
    encoding = text(payload.get("encoding_format"), "encoding_format", "float")
    if encoding not in ENCODINGS:
        raise TranslationError("encoding_format: must be 'float' or 'base64'")
    text(payload.get("user"), "user")
    return EmbeddingsRequest(texts, tokens, dimensions, encoding)


def _inputs(value: Any) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """``input``: a string, a list of strings, a token array, or a list of token arrays."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise TranslationError("input: must be a non-empty string, list of strings or list of token arrays")
    if len(value) > MAX_INPUTS:
        raise TranslationError(f"input: at most {MAX_INPUTS} items in one request")
    if all(isinstance(item, str) for item in value):
        if not all(value):
            raise TranslationError("input: an empty string cannot be embedded")
        return tuple(value), ()
    if all(_is_token(item) for item in value):
        return (), (tuple(value),)
    if all(isinstance(item, list) and item and all(_is_token(t) for t in item) for item in value):
        return (), tuple(tuple(item) for item in value)
    raise TranslationError("input: must be strings or token arrays (non-negative integers), not a mix")


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def encode_vector(values: list[float], encoding: str) -> list[float] | str:
    """One embedding as OpenAI writes it: the floats, or base64 of their little-endian float32 bytes."""
    if encoding == "base64":
        try:
            packed = struct.pack(f"<{len(values)}f", *values)
        except OverflowError:  # beyond float32: no embedding, a broken answer
            raise ValueError("an embedding value does not fit a float32") from None
        return base64.b64encode(packed).decode("ascii")
    return values


# -- upstream wires -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """An upstream's answer in the client's shape, with its input tokens and whether they were estimated."""

    body: bytes
    tokens: int
    estimated: bool


class EmbeddingsWire(Protocol):
    """How an upstream wire serves embeddings (a codec's ``embeddings``): passed through, or translated both ways."""

    passes_through: bool  # True: the client's body goes to ``path`` as it is, the model id aside

    def path(self, model: str) -> str: ...

    def encode(self, request: EmbeddingsRequest, model: str) -> bytes: ...

    def decode(self, body: bytes, request: EmbeddingsRequest, model: str) -> Answer: ...


class OpenAIEmbeddings:
    """OpenAI-shaped providers serve the API itself: the client's body passes through, model id aside."""

    passes_through = True

    def path(self, model: str) -> str:
        return "/embeddings"

    def encode(self, request: EmbeddingsRequest, model: str) -> bytes:
        raise TranslationError("OpenAI-shaped embeddings pass through")

    def decode(self, body: bytes, request: EmbeddingsRequest, model: str) -> Answer:
        raise ValueError("OpenAI-shaped embeddings pass through")


class GeminiEmbeddings:
    """Gemini's ``batchEmbedContents``: one request per text, ``outputDimensionality`` for ``dimensions``.

    Gemini reports no token usage for embeddings: the input tokens are estimated (four characters a token)
    and the answer says so (``Answer.estimated``).
    """

    passes_through = False

    def path(self, model: str) -> str:
        return f"/v1beta/models/{model.removeprefix('models/')}:batchEmbedContents"

    def encode(self, request: EmbeddingsRequest, model: str) -> bytes:
        if request.tokens:
            raise TranslationError("input: token arrays are only served by OpenAI-shaped providers; send text")
        if len(request.texts) > GEMINI_BATCH:
            raise TranslationError(f"input: this model's provider (Gemini) embeds at most {GEMINI_BATCH} texts at once")
        name = f"models/{model.removeprefix('models/')}"
        requests: list[dict[str, Any]] = []
        for item in request.texts:
            one: dict[str, Any] = {"model": name, "content": {"parts": [{"text": item}]}}
            if request.dimensions is not None:
                one["outputDimensionality"] = request.dimensions
            requests.append(one)
        return orjson.dumps({"requests": requests})

    def decode(self, body: bytes, request: EmbeddingsRequest, model: str) -> Answer:
        """``embeddings[].values`` as OpenAI's ``data[]``; a malformed answer raises (the exchange's bad_response)."""
        embeddings = orjson.loads(body)["embeddings"]
        if not isinstance(embeddings, list) or len(embeddings) != len(request.texts):
            raise ValueError("batchEmbedContents answered another number of embeddings than it was sent")
        data = []
        for index, embedding in enumerate(embeddings):
            values = embedding["values"]
            if not isinstance(values, list) or not all(_is_float(v) for v in values):
                raise ValueError("an embedding's values are not numbers")
            data.append({"object": "embedding", "index": index, "embedding": encode_vector(values, request.encoding)})
        tokens = sum(math.ceil(len(item) / 4) for item in request.texts)
        document = {"object": "list", "data": data, "model": model,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip
        return Answer(orjson.dumps(document), tokens, estimated=True)


def _is_float(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
