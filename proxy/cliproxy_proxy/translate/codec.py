"""The codec interface: everything one wire format knows, so the exchange, the runtime and counting name no wire.

A codec serves its format both ways: as the client's (inbound: decode requests, encode answers and errors) and as
the provider's (upstream: the path, the body, the answer whole or streamed, how a key is presented or a request
signed, what an error means, how tokens are counted, how embeddings are served). Adding a wire is one class
meeting :class:`Codec` (most of it inherited from :class:`CodecBase`), registered in ``translate.UPSTREAM``;
see ``docs/codecs.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Self

import orjson

from ..oauth.base import TokenSet
from .canonical import Event, EventDecoder, Request, Response, StreamEncoder, StreamEnd, TranslationError, Usage
from .embeddings import EmbeddingsWire
from .sse import SSEDecoder

#: What an upstream's error answer means for routing. ``auth``: this credential is refused; ``quota``: it is
#: rate-limited; ``not_found``: the model (or the path) is unknown there; ``retryable``: a fault another try may
#: not meet; ``context_window``: the request is too long for this model (a fallback model may take it); ``fatal``:
#: the request itself is at fault, and no other credential would do better.
ErrorKind = Literal["auth", "quota", "not_found", "retryable", "context_window", "fatal"]


@dataclass(slots=True)
class UpstreamCall:
    """One upstream request just before it is sent: what an authentication hook reads and adds headers to.

    ``url`` is absolute (the credential's base URL and the path): what a signature covers.
    """

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | bytearray


class CredentialView(Protocol):
    """What an authentication hook sees of the credential it authenticates (``runtime.Credential``)."""

    @property
    def label(self) -> str: ...

    @property
    def base_url(self) -> str: ...

    def current_secret(self) -> str | None: ...


class StreamDecoder(Protocol):
    """An upstream stream's bytes, in any chunking, as canonical events; ``close`` once the body has ended.

    SSE wires wrap the shared parser (:class:`.sse.SSEDecoder`); binary ones (AWS event-stream) their framing.
    """

    def feed(self, chunk: bytes) -> list[Event]: ...

    def close(self) -> list[Event]: ...


class Codec(Protocol):
    """Everything one wire format needs, as the client's format (inbound) and as the provider's (upstream)."""

    name: str
    #: What ends a stream of this format (its terminal or error event): a stream passed through without it was
    #: cut short, however cleanly the connection closed.
    stream_end: StreamEnd
    keepalive: bytes  # written to the client while the upstream is slow: what this wire's clients tolerate
    vendor_headers: tuple[str, ...]  # prefixes of the client headers a same-format upstream must see too
    model_key: str  # the answer's field naming the model, rewritten when an alias is passed through
    json_mode: bool  # False: structured output is asked for in the system prompt instead
    default_headers: Mapping[str, str]  # sent on every request; a client's own same-format header replaces them
    #: True: :meth:`authenticate` is awaited before every request (a signature over the body, a refreshed token);
    #: False: :meth:`auth_headers` is all, computed once per credential and path.
    authenticates_each_request: bool
    embeddings: EmbeddingsWire | None  # how the wire serves ``/v1/embeddings``; None: it does not
    counts_tokens: bool  # whether :meth:`count_request` is served
    #: What every body or stream event that reports this wire's token usage holds, spacing and all: a stream passed
    #: through decodes only the events that do.
    usage_markers: tuple[bytes, ...]

    # inbound: what clients send and receive
    def decode_request(self, body: dict[str, Any]) -> Request: ...

    def encode_response(self, response: Response) -> bytes: ...

    def stream_encoder(self, request: Request) -> StreamEncoder: ...

    def encode_error(self, status: int, message: str, code: str | None) -> bytes: ...

    # upstream: what providers receive and send
    def upstream_path(self, model: str, stream: bool) -> str: ...

    def encode_request(self, request: Request) -> bytes: ...

    def decode_response(self, body: dict[str, Any]) -> Response: ...

    def decode_body(self, body: bytes) -> Response:
        """A whole upstream answer; raises ValueError-likes when malformed, ``UpstreamFailed`` when it is an error."""
        ...

    def stream_decoder(self) -> StreamDecoder: ...

    def for_entry(self, entry: object) -> Codec:
        """The codec for one config entry (``config._Routed``): one holding what its wire needs of it (a region, a
        cloud identity built once); most wires serve every entry with one codec."""
        ...

    def with_tokens(self, tokens: TokenSet) -> Codec:
        """The codec for one session credential (Kiro's carries the account's profile ARN)."""
        ...

    # authentication of the upstream request
    def auth_headers(self, key: str) -> dict[str, str]: ...

    async def authenticate(self, call: UpstreamCall, credential: CredentialView) -> None: ...

    # the upstream's errors
    def classify_error(self, status: int, body: bytes) -> ErrorKind: ...

    # counting
    def count_request(self, inbound: Codec, payload: dict[str, Any], raw: bytes | bytearray, model: str
                      ) -> tuple[str, bytes | bytearray]: ...  # fmt: skip

    def count_of(self, body: dict[str, Any]) -> int | None: ...

    # usage, read from an answer passed through as it came
    def usage_of(self, document: Any) -> Usage | None:
        """The token usage a body or a stream event of this wire reports, if it reports one."""
        ...


def status_kind(status: int) -> ErrorKind:
    """What a status alone says (cliproxyapi++'s verdicts): the default before a codec reads the body."""
    if status == 408 or status >= 500:
        return "retryable"
    if status == 429:
        return "quota"
    if status in (401, 402, 403):
        return "auth"
    if status == 404:
        return "not_found"
    return "fatal"


class CodecBase:
    """Defaults a codec overrides where its wire differs: bearer keys, JSON answers, SSE streams, no counting."""

    model_key = "model"
    json_mode = True
    default_headers: Mapping[str, str] = {}
    authenticates_each_request = False
    embeddings: EmbeddingsWire | None = None
    counts_tokens = False
    usage_markers: tuple[bytes, ...] = ()  # a wire never passed through reads its usage in its decoders
    #: Phrases of a 400/413 body saying the request is longer than the model's context window.
    context_window_markers: tuple[bytes, ...] = ()
    #: Phrases of a 400 body saying the key is refused (Google answers a wrong key with 400, not 401).
    auth_markers: tuple[bytes, ...] = ()

    # The inbound half, for wires no client speaks (Kiro, Bedrock): no route leads here.

    def decode_request(self, body: dict[str, Any]) -> Request:
        raise TranslationError(f"{type(self).__name__} is not a client format")

    def encode_response(self, response: Response) -> bytes:
        raise TranslationError(f"{type(self).__name__} is not a client format")

    def stream_encoder(self, request: Request) -> StreamEncoder:
        raise TranslationError(f"{type(self).__name__} is not a client format")

    def encode_error(self, status: int, message: str, code: str | None) -> bytes:
        raise TranslationError(f"{type(self).__name__} is not a client format")

    def decode_response(self, body: dict[str, Any]) -> Response:
        raise TranslationError(f"{type(self).__name__} is not an upstream format")

    def decode_body(self, body: bytes) -> Response:
        return self.decode_response(orjson.loads(body))

    def event_decoder(self) -> EventDecoder:
        """One SSE event at a time, for :meth:`stream_decoder`; wires that do not stream SSE override that instead."""
        raise TranslationError(f"{type(self).__name__} is not an upstream format")

    def stream_decoder(self) -> StreamDecoder:
        return SSEDecoder(self.event_decoder())

    def for_entry(self, entry: object) -> Self:
        return self

    def with_tokens(self, tokens: TokenSet) -> Self:
        return self

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def authenticate(self, call: UpstreamCall, credential: CredentialView) -> None:
        return None

    def classify_error(self, status: int, body: bytes) -> ErrorKind:
        if status in (400, 413) and any(marker in body for marker in self.context_window_markers):
            return "context_window"
        if status == 400 and any(marker in body for marker in self.auth_markers):
            return "auth"
        return status_kind(status)

    def count_request(self, inbound: Codec, payload: dict[str, Any], raw: bytes | bytearray, model: str
                      ) -> tuple[str, bytes | bytearray]:  # fmt: skip
        raise TranslationError(f"{type(self).__name__} does not count tokens")

    def count_of(self, body: dict[str, Any]) -> int | None:
        return None

    def usage_of(self, document: Any) -> Usage | None:
        return None
