"""Wire formats: one codec per format, all meeting in the canonical model."""

from __future__ import annotations

import dataclasses

from ..catalog import Wire
from .anthropic import AnthropicCodec
from .bedrock import BedrockCodec
from .canonical import Message, Request, Thinking
from .codec import Codec
from .completions import OpenAICompletionsCodec
from .gemini import GeminiCodec, VertexCodec
from .kiro import KiroCodec
from .openai_chat import OpenAIChatCodec
from .responses import ResponsesCodec

OPENAI_CHAT: Codec = OpenAIChatCodec()
OPENAI_COMPLETIONS: Codec = OpenAICompletionsCodec()
ANTHROPIC: Codec = AnthropicCodec()
GEMINI: Codec = GeminiCodec()
RESPONSES: Codec = ResponsesCodec()

#: The codec each upstream wire format speaks.
UPSTREAM: dict[Wire, Codec] = {
    Wire.OPENAI_CHAT: OPENAI_CHAT,
    Wire.ANTHROPIC: ANTHROPIC,
    Wire.GEMINI: GEMINI,
    Wire.VERTEX: VertexCodec(),
    Wire.RESPONSES: RESPONSES,
    Wire.KIRO: KiroCodec(),  # each Kiro credential has its own, carrying its profile ARN
    Wire.BEDROCK: BedrockCodec(),  # each entry has its own, carrying its AWS identity
}


def passes_through(inbound: Codec, upstream: Codec) -> bool:
    """Whether a request can go out as the client sent it (the model id aside)."""
    return inbound.name == upstream.name or (inbound is OPENAI_COMPLETIONS and upstream is OPENAI_CHAT)


def codec_for_path(path: str) -> Codec:
    """The client's format, judged by the endpoint it called: errors must come back in that format."""
    if path.startswith("/v1/messages"):
        return ANTHROPIC
    if path.startswith("/v1beta/") or (path.startswith("/v1/models/") and ":" in path):
        return GEMINI
    return OPENAI_CHAT


def for_upstream(request: Request, inbound: Codec, upstream: Codec) -> Request:
    """The request as another vendor may see it: a reasoning signature only means something to its maker, and
    structured output becomes an instruction where the vendor has no JSON mode.

    cliproxyapi++ users hit "invalid signature" errors when a conversation moved between vendors: reasoning
    from the client's format reaches another format unsigned, and each encoder then drops what it cannot replay.
    """
    if request.output is not None and not upstream.json_mode:
        request = dataclasses.replace(request, system=[*request.system, request.output.instructions()], output=None)
    if inbound.name == upstream.name:
        return request
    messages = [
        Message(m.role, [Thinking(p.text) if isinstance(p, Thinking) and p.signature else p for p in m.parts])
        for m in request.messages
    ]
    return dataclasses.replace(request, messages=messages)
