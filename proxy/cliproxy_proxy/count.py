"""Token counting (Anthropic's ``count_tokens``, Gemini's ``countTokens``) through a provider that can count.

Counting is a read-only side door: one ready credential is asked, with no failover, no cooldown and no usage
metrics. Providers without a counting endpoint (OpenAI-shaped ones) get a clear 501 rather than a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .catalog import Wire
from .health import Health
from .runtime import Route, Target
from .translate import ANTHROPIC, GEMINI, UPSTREAM
from .translate.canonical import Codec, TranslationError, reencode
from .upstream import Pool, UpstreamError

COUNTING_WIRES = (Wire.ANTHROPIC, Wire.GEMINI, Wire.VERTEX)


class CountError(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _target(route: Route, health: Health) -> Target:
    others = {id(t) for t in route.targets if t.credential.wire not in COUNTING_WIRES}
    target = health.pick(route, "fill-first", others)
    if target is None and len(others) < len(route.targets):
        raise CountError(429, f"The providers of model '{route.model}' that count tokens are cooling down; "
                         "retry shortly.", "model_cooldown")  # fmt: skip
    if target is None:
        raise CountError(501, f"No provider of model '{route.model}' can count tokens.", "count_unavailable")
    return target


def _upstream_body(
    inbound: Codec, payload: dict[str, Any], raw: bytes | bytearray, target: Target
) -> tuple[str, bytes | bytearray]:
    """The counting request in the target's format: passed through, or translated through the canonical model."""
    wire = target.credential.wire
    model = target.upstream_model
    if wire is Wire.ANTHROPIC:
        if inbound is ANTHROPIC:
            return "/v1/messages/count_tokens", reencode(payload, model)
        request = inbound.decode_request(payload)
        request.model = model
        body = orjson.loads(ANTHROPIC.encode_request(request))
        body.pop("max_tokens", None)
        body.pop("stream", None)
        return "/v1/messages/count_tokens", orjson.dumps(body)
    prefix = "/v1beta/models" if wire is Wire.GEMINI else "/v1/publishers/google/models"
    if inbound is GEMINI:
        return f"{prefix}/{model}:countTokens", raw
    request = inbound.decode_request({"max_tokens": 1, **payload})
    request.model = model
    generate = orjson.loads(UPSTREAM[wire].encode_request(request))
    generate.pop("generationConfig", None)
    if wire is Wire.VERTEX:  # Vertex counts the request's own fields; Gemini wants them wrapped
        return f"{prefix}/{model}:countTokens", orjson.dumps(generate)
    wrapped = {"generateContentRequest": {"model": f"models/{model}", **generate}}
    return f"{prefix}/{model}:countTokens", orjson.dumps(wrapped)


async def count_tokens(pool: Pool, health: Health, route: Route, inbound: Codec, payload: dict[str, Any],
                       raw: bytes | bytearray, connect_timeout: float, read_timeout: float,
                       vendor: Mapping[str, str]) -> int:  # fmt: skip
    """Input tokens of a request, as the provider counts them; ``vendor``: the client's vendor headers."""
    target = _target(route, health)
    try:
        path, body = _upstream_body(inbound, payload, raw, target)
    except TranslationError as error:
        raise CountError(400, str(error), "untranslatable_request") from None
    credential = target.credential
    same_format = inbound.name == UPSTREAM[credential.wire].name
    head = credential.head(credential.scoped(path), vendor if same_format else None)
    try:
        response = await pool.request(credential.endpoint, head, body,
                                      connect_timeout=connect_timeout, read_timeout=read_timeout)  # fmt: skip
        try:
            answer = await response.read()
        finally:
            response.release()
    except UpstreamError:
        raise CountError(
            502, f"The provider of model '{route.model}' could not be reached.", "upstream_unavailable"
        ) from None
    if response.status >= 400:
        raise CountError(
            response.status, f"The provider refused to count tokens (HTTP {response.status}).", "upstream_error"
        )
    try:
        document = orjson.loads(answer)
    except orjson.JSONDecodeError:
        document = None
    count = document.get("input_tokens", document.get("totalTokens")) if isinstance(document, dict) else None
    if not isinstance(count, int):
        raise CountError(502, "The provider's token count was not understood.", "upstream_bad_response")
    return count
