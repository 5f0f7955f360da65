"""Errors in OpenAI's shape: ``{"error": {"message", "type", "code"}}`` with the matching HTTP status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_implemented_error",
}


def error_body(status: int, message: str, code: str | None, **extra: Any) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code, **extra}}


def error_response(
    status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(error_body(status, message, code, **extra)),
        content_type="application/json",
        headers=headers,
    )


def sse_error(status: int, message: str, code: str) -> bytes:
    """An in-stream error event; the OpenAI SDKs raise it as an APIError."""
    return b"data: " + orjson.dumps(error_body(status, message, code)) + b"\n\n"
