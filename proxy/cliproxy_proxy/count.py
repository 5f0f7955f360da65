"""Token counting through a provider whose wire can count (its codec's ``count_request`` and ``count_of``).

Counting is a read-only side door: one ready credential is asked, with no failover, no cooldown and no usage
metrics. Providers without a counting endpoint (OpenAI-shaped ones) get a clear 501 rather than a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .health import Health
from .oauth.base import TokenError
from .runtime import Route, Target
from .translate.canonical import TranslationError
from .translate.codec import Codec
from .upstream import Pool, UpstreamError


class CountError(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _target(route: Route, health: Health) -> Target:
    others = {id(t) for t in route.targets if not t.credential.codec.counts_tokens}
    target = health.pick(route, "fill-first", others)
    if target is None and len(others) < len(route.targets):
        raise CountError(429, f"The providers of model '{route.model}' that count tokens are cooling down; "
                         "retry shortly.", "model_cooldown")  # fmt: skip
    if target is None:
        raise CountError(501, f"No provider of model '{route.model}' can count tokens.", "count_unavailable")
    return target


async def count_tokens(pool: Pool, health: Health, route: Route, inbound: Codec, payload: dict[str, Any],
                       raw: bytes | bytearray, connect_timeout: float, read_timeout: float,
                       vendor: Mapping[str, str]) -> int:  # fmt: skip
    """Input tokens of a request, as the provider counts them; ``vendor``: the client's vendor headers."""
    target = _target(route, health)
    credential = target.credential
    try:
        path, body = credential.codec.count_request(inbound, payload, raw, target.upstream_model)
    except TranslationError as error:
        raise CountError(400, str(error), "untranslatable_request") from None
    path = credential.scoped(path)
    same_format = vendor if inbound.name == credential.codec.name else None
    unreachable = CountError(
        502, f"The provider of model '{route.model}' could not be reached.", "upstream_unavailable"
    )
    try:
        if credential.codec.authenticates_each_request:
            head = await credential.signed_head(path, same_format, body)
        else:
            head = credential.head(path, same_format)
        response = await pool.request(credential.endpoint, head, body,
                                      connect_timeout=connect_timeout, read_timeout=read_timeout)  # fmt: skip
        try:
            answer = await response.read()
        finally:
            response.release()
    except (UpstreamError, TokenError):
        raise unreachable from None
    if response.status >= 400:
        raise CountError(
            response.status, f"The provider refused to count tokens (HTTP {response.status}).", "upstream_error"
        )
    try:
        document = orjson.loads(answer)
    except orjson.JSONDecodeError:
        document = None
    count = credential.codec.count_of(document) if isinstance(document, dict) else None
    if count is None:
        raise CountError(502, "The provider's token count was not understood.", "upstream_bad_response")
    return count
