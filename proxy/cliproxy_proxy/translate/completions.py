"""OpenAI's legacy ``/v1/completions`` as a client format: a prompt in, text out.

OpenAI-shaped providers get the request as sent; any other provider gets the prompt as one user message. No
provider speaks it natively any more, so it is never an upstream format.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, NoReturn

import orjson

from ..errors import error_body
from . import fields
from .canonical import (
    SSE_COMMENT,
    USAGE_MARKERS,
    Event,
    Finish,
    Message,
    Request,
    Response,
    StreamError,
    Text,
    TextDelta,
    TranslationError,
    Usage,
)
from .codec import CodecBase
from .openai_chat import STREAM_END, OpenAIChatCodec, OpenAIStreamEncoder

_CHAT = OpenAIChatCodec()
_UPSTREAM = "legacy completions is a client format only: no provider is called with it"
_UNSUPPORTED = ("suffix", "echo", "logprobs", "best_of", "logit_bias")


def _usage(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.input, "completion_tokens": usage.output, "total_tokens": usage.total}


class OpenAICompletionsCodec(CodecBase):
    name = "openai-completions"
    stream_end = STREAM_END
    keepalive = SSE_COMMENT
    vendor_headers: tuple[str, ...] = ("openai-beta",)
    usage_markers = USAGE_MARKERS

    def usage_of(self, document: Any) -> Usage | None:
        return _CHAT.usage_of(document)  # the same usage object as chat's

    def upstream_path(self, model: str, stream: bool) -> str:
        return "/completions"

    def encode_error(self, status: int, message: str, code: str | None) -> bytes:
        return orjson.dumps(error_body(status, message, code))

    def decode_request(self, body: dict[str, Any]) -> Request:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise TranslationError("prompt: only a single text prompt can be translated to this provider")
        for key in _UNSUPPORTED:
            value = body.get(key)
            if value not in (None, False, 0, "", {}) and not (key == "best_of" and value == 1):
                raise TranslationError(f"{key}: cannot be translated to this provider")
        if body.get("n", 1) not in (1, None):
            raise TranslationError("n: only one choice can be translated to this provider")
        options = body.get("stream_options")
        limit = fields.integer(body.get("max_tokens"), "max_tokens")
        return Request(
            model=str(body.get("model", "")),
            messages=[Message("user", [Text(prompt)])],
            max_tokens=16 if "max_tokens" not in body else limit,  # the legacy API's own default
            temperature=fields.number(body.get("temperature"), "temperature"),
            top_p=fields.number(body.get("top_p"), "top_p"),
            stop=fields.texts(body.get("stop"), "stop"),
            stream=body.get("stream") is True,
            stream_usage=isinstance(options, dict) and options.get("include_usage") is True,
        )

    def encode_response(self, response: Response) -> bytes:
        text = "".join(p.text for p in response.parts if isinstance(p, Text))
        finish = "length" if response.finish == "length" else "stop"
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return orjson.dumps({
            "id": f"cmpl-{response.id}", "object": "text_completion", "created": int(time.time()),
            "model": response.model, "choices": [choice], "usage": _usage(response.usage),
        })  # fmt: skip

    def stream_encoder(self, request: Request) -> _StreamEncoder:
        return _StreamEncoder(request.model, request.stream_usage)

    def encode_request(self, request: Request) -> NoReturn:
        raise TranslationError(_UPSTREAM)

    def decode_response(self, body: dict[str, Any]) -> NoReturn:
        raise TranslationError(_UPSTREAM)


class _StreamEncoder(OpenAIStreamEncoder):
    OBJECT = "text_completion"

    def __init__(self, model: str, usage: bool) -> None:
        super().__init__(model, usage, f"cmpl-{uuid.uuid4().hex[:24]}")

    def _choice(self, payload: Any, finish: str | None) -> dict[str, Any]:
        return {"index": 0, "text": payload, "logprobs": None, "finish_reason": finish}

    def _usage(self, usage: Usage) -> dict[str, Any]:
        return _usage(usage)

    def encode(self, event: Event) -> bytes:
        if isinstance(event, TextDelta):
            return self._chunk(event.text)
        if isinstance(event, Finish):
            if event.usage is not None:
                self.pending_usage = event.usage
            if event.reason is None:
                return b""
            return self._chunk("", "length" if event.reason == "length" else "stop")
        if isinstance(event, StreamError):
            return b"data: " + orjson.dumps(error_body(event.status, event.message, "upstream_error")) + b"\n\n"
        return b""  # MessageStart, reasoning and tool events have no place in a text completion
