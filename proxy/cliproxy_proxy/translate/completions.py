"""OpenAI's legacy ``/v1/completions``: passed through to OpenAI-shaped providers, never translated."""

from __future__ import annotations

from typing import Any, NoReturn

import orjson

from ..errors import error_body
from .canonical import Request, Response, StreamDecoder, StreamEncoder, TranslationError

_ONLY = "legacy completions reach OpenAI-shaped providers only; use /v1/chat/completions"


class OpenAICompletionsCodec:
    name = "openai-completions"

    def upstream_path(self, model: str, stream: bool) -> str:
        return "/completions"

    def encode_error(self, status: int, message: str, code: str | None) -> bytes:
        return orjson.dumps(error_body(status, message, code))

    def stream_encoder(self, request: Request) -> StreamEncoder:
        from .openai_chat import OpenAIChatCodec  # its in-stream error events are the same

        return OpenAIChatCodec().stream_encoder(request)

    def decode_request(self, body: dict[str, Any]) -> NoReturn:
        raise TranslationError(_ONLY)

    def encode_response(self, response: Response) -> NoReturn:
        raise TranslationError(_ONLY)

    def encode_request(self, request: Request) -> NoReturn:
        raise TranslationError(_ONLY)

    def decode_response(self, body: dict[str, Any]) -> NoReturn:
        raise TranslationError(_ONLY)

    def stream_decoder(self) -> StreamDecoder:
        raise TranslationError(_ONLY)
