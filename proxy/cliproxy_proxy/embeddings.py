"""``POST /v1/embeddings``: routed like chat (aliases, prefixes, failover, cooldowns, metrics), never streamed.

The exchange is the chat one; only what is sent and how a translated answer reads back differ, and the wires'
knowledge of both lives in ``translate.embeddings``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .forward import Exchange, Failure
from .runtime import Route, Runtime, Target
from .state import Proxy
from .translate import embeddings
from .translate.canonical import Reasoning, TranslationError, Usage, reencode
from .translate.codec import Codec

#: Says a response's ``usage`` is the proxy's estimate: the provider reported none.
USAGE_HEADER = "X-Cliproxy-Usage"


class EmbeddingsExchange(Exchange):
    """One embeddings request through the routing of chat."""

    operation = "embeddings"

    def __init__(
        self, proxy: Proxy, request: web.Request, runtime: Runtime, route: Route, inbound: Codec,
        payload: dict[str, Any], raw: bytes | bytearray, started: float, *, stream: bool,
        reasoning: Reasoning | None = None,
    ) -> None:  # fmt: skip
        # Never a stream, and a thinking suffix means nothing to an embedding model.
        super().__init__(proxy, request, runtime, route, inbound, payload, raw, started, stream=False)
        self.estimated = False

    async def run(self) -> web.StreamResponse:
        """The body is checked before any provider is picked: a bad one costs no credential a request."""
        try:
            self.embedding = embeddings.decode_request(self.payload)
        except TranslationError as error:
            self.proxy.metrics.errors.labels(self.provider, "invalid_request").inc()
            return await self.reply_error(400, str(error), "invalid_request")
        return await super().run()

    async def attempt(self, target: Target) -> web.StreamResponse | Failure:
        if target.credential.codec.embeddings is None:
            message = f"The providers of model '{self.route.model}' do not serve embeddings."
            return Failure(404, "no_endpoint", message)  # known without asking: not counted, nothing rests
        return await super().attempt(target)

    def outgoing(self, target: Target, upstream_codec: Codec) -> tuple[bytes | bytearray, str, Codec | None]:
        model = target.upstream_model
        wire = upstream_codec.embeddings
        assert wire is not None  # attempt() let only wires that serve embeddings through
        if not wire.passes_through:
            return wire.encode(self.embedding, model), wire.path(model), upstream_codec
        body = self.raw if target.rewrite is None else reencode(self.payload, model)
        return body, wire.path(model), None

    def translated(self, codec: Codec, body: bytes) -> bytes:
        assert self.credential is not None  # set by attempt() before any answer
        wire = self.credential.codec.embeddings
        assert wire is not None
        answer = wire.decode(body, self.embedding, self.route.model)
        self.usage, self.estimated = Usage(answer.tokens), answer.estimated
        return answer.body

    def proxy_headers(self) -> dict[str, str]:
        headers = super().proxy_headers()
        if self.estimated:
            headers[USAGE_HEADER] = "estimated"
        return headers
