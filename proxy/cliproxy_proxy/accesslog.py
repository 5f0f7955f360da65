"""The access log, minus the secrets a URL can carry: Gemini clients send their key as ``?key=``."""

from __future__ import annotations

from aiohttp.web import BaseRequest, StreamResponse
from aiohttp.web_log import AccessLogger
from yarl import URL

#: Query parameters that carry a credential in the APIs the proxy speaks (and in the habits of their clients).
SECRET_PARAMETERS = frozenset({"key", "api_key", "apikey", "api-key", "auth_token", "access_token", "token"})
REDACTED = "REDACTED"


def redact_query(url: URL) -> URL:
    """``url`` with the value of every credential-carrying query parameter replaced."""
    return url.with_query([(k, REDACTED if k.lower() in SECRET_PARAMETERS else v) for k, v in url.query.items()])


class RedactingAccessLogger(AccessLogger):
    """aiohttp's access log (same format), with credential query parameters redacted from the request line."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if request is not None and any(k.lower() in SECRET_PARAMETERS for k in request.rel_url.query):
            request = request.clone(rel_url=redact_query(request.rel_url))
        super().log(request, response, time)
