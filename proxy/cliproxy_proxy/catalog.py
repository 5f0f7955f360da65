"""The provider catalog: every config block, the wire format it speaks and its default base URL.

Base URLs follow cliproxyapi++'s ``providers.json`` and each vendor's public API reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Wire(StrEnum):
    """The upstream protocol a provider block speaks."""

    OPENAI_CHAT = "openai-chat"
    ANTHROPIC = "anthropic-messages"
    GEMINI = "gemini"
    VERTEX = "vertex"
    RESPONSES = "openai-responses"
    KIRO = "kiro"
    BEDROCK = "bedrock"


@dataclass(frozen=True, slots=True)
class ProviderKind:
    block: str
    wire: Wire
    default_base_url: str | None
    group: str


_KINDS = (
    ProviderKind("claude-api-key", Wire.ANTHROPIC, "https://api.anthropic.com", "direct"),
    ProviderKind("gemini-api-key", Wire.GEMINI, "https://generativelanguage.googleapis.com", "direct"),
    ProviderKind("codex-api-key", Wire.RESPONSES, "https://api.openai.com/v1", "direct"),
    ProviderKind("deepseek", Wire.OPENAI_CHAT, "https://api.deepseek.com", "direct"),
    ProviderKind("groq", Wire.OPENAI_CHAT, "https://api.groq.com/openai/v1", "direct"),
    ProviderKind("mistral", Wire.OPENAI_CHAT, "https://api.mistral.ai/v1", "direct"),
    ProviderKind("openrouter", Wire.OPENAI_CHAT, "https://openrouter.ai/api/v1", "aggregator"),
    ProviderKind("together", Wire.OPENAI_CHAT, "https://api.together.xyz/v1", "aggregator"),
    ProviderKind("fireworks", Wire.OPENAI_CHAT, "https://api.fireworks.ai/inference/v1", "aggregator"),
    ProviderKind("novita", Wire.OPENAI_CHAT, "https://api.novita.ai/v1", "aggregator"),
    ProviderKind("siliconflow", Wire.OPENAI_CHAT, "https://api.siliconflow.cn/v1", "aggregator"),
    ProviderKind("openai-compatibility", Wire.OPENAI_CHAT, None, "compatibility"),
    ProviderKind("vertex-api-key", Wire.VERTEX, "https://aiplatform.googleapis.com", "compatibility"),
    ProviderKind("bedrock", Wire.BEDROCK, None, "cloud"),  # https://bedrock-runtime.{region}.amazonaws.com
    # The session blocks' endpoints as their vendors' own tools call them (docs/providers.md): cliproxyapi++'s
    # providers.json has roo without /proxy, kilo at /v1 and minimax at its old domain.
    ProviderKind("minimax", Wire.OPENAI_CHAT, "https://api.minimax.io/v1", "oauth"),
    ProviderKind("roo", Wire.OPENAI_CHAT, "https://api.roocode.com/proxy/v1", "oauth"),
    ProviderKind("kilo", Wire.OPENAI_CHAT, "https://api.kilo.ai/api/gateway", "oauth"),
    ProviderKind("kiro", Wire.KIRO, "https://q.us-east-1.amazonaws.com", "oauth"),
    ProviderKind("cursor", Wire.OPENAI_CHAT, "http://127.0.0.1:3000/v1", "oauth"),  # a cursor-api sidecar
    ProviderKind("ampcode", Wire.ANTHROPIC, "https://ampcode.com/api/provider/anthropic", "oauth"),
)

KINDS: dict[str, ProviderKind] = {kind.block: kind for kind in _KINDS}
