"""Each codec reads its own vendor's error answers: what routing does next depends on it."""

from __future__ import annotations

import orjson
import pytest

from cliproxy_proxy.catalog import Wire
from cliproxy_proxy.translate import UPSTREAM
from cliproxy_proxy.translate.codec import ErrorKind

OPENAI_TOO_LONG = {"error": {
    "message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
    "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded",
}}  # fmt: skip
ANTHROPIC_TOO_LONG = {
    "type": "error",
    "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"},
}
GEMINI_TOO_LONG = {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "The input token count (1200000) "
                             "exceeds the maximum number of tokens allowed (1048576)."}}  # fmt: skip
GEMINI_BAD_KEY = {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                            "status": "INVALID_ARGUMENT", "details": [{
                                "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                                "domain": "googleapis.com"}]}}  # fmt: skip
KIRO_TOO_LONG = {"message": "Input is too long.", "reason": "CONTENT_LENGTH_EXCEEDS_THRESHOLD"}
PLAIN_400 = {"error": {"message": "messages: field required", "type": "invalid_request_error"}}


@pytest.mark.parametrize(
    ("wire", "status", "body", "kind"),
    [
        (Wire.OPENAI_CHAT, 400, OPENAI_TOO_LONG, "context_window"),
        (Wire.RESPONSES, 400, OPENAI_TOO_LONG, "context_window"),
        (Wire.ANTHROPIC, 400, ANTHROPIC_TOO_LONG, "context_window"),
        (Wire.GEMINI, 400, GEMINI_TOO_LONG, "context_window"),
        (Wire.VERTEX, 400, GEMINI_TOO_LONG, "context_window"),
        (Wire.KIRO, 400, KIRO_TOO_LONG, "context_window"),
        (Wire.GEMINI, 400, GEMINI_BAD_KEY, "auth"),
        (Wire.OPENAI_CHAT, 400, GEMINI_BAD_KEY, "fatal"),  # only Google's wires mean a key by it
        (Wire.ANTHROPIC, 400, OPENAI_TOO_LONG, "fatal"),  # nor does another vendor's phrase count
        (Wire.OPENAI_CHAT, 400, PLAIN_400, "fatal"),
        (Wire.OPENAI_CHAT, 422, PLAIN_400, "fatal"),
        (Wire.OPENAI_CHAT, 413, OPENAI_TOO_LONG, "context_window"),
        (Wire.ANTHROPIC, 429, ANTHROPIC_TOO_LONG, "quota"),  # the status speaks first
        (Wire.GEMINI, 503, PLAIN_400, "retryable"),
        (Wire.KIRO, 408, PLAIN_400, "retryable"),
        (Wire.KIRO, 403, KIRO_TOO_LONG, "auth"),
        (Wire.RESPONSES, 402, PLAIN_400, "auth"),
        (Wire.VERTEX, 404, PLAIN_400, "not_found"),
    ],
)
def test_each_codec_classifies_its_vendors_errors(wire: Wire, status: int, body: dict[str, object],
                                                  kind: ErrorKind) -> None:  # fmt: skip
    assert UPSTREAM[wire].classify_error(status, orjson.dumps(body)) == kind
