"""``GET /v1/models`` in each client's own shape: each SDK lists models at the same path and reads its vendor's.

Everything here takes ``owners`` (model id -> the provider serving it first), so a snapshot builds the full
lists once and a restricted client key gets its own on request.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

#: The codec names of the client formats whose full list a snapshot keeps ready.
DEFAULT_SHAPE = "openai-chat"
ANTHROPIC_SHAPE = "anthropic-messages"


def openai_list(owners: Mapping[str, str], created: float) -> bytes:
    data = [openai_model(model_id, owner, created) for model_id, owner in sorted(owners.items())]
    return orjson.dumps({"object": "list", "data": data})


def openai_model(model_id: str, owner: str, created: float) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": int(created), "owned_by": owner}


def anthropic_model(model_id: str, created: float) -> dict[str, str]:
    """One model in Anthropic's shape."""
    stamp = datetime.fromtimestamp(int(created), UTC).isoformat().replace("+00:00", "Z")
    return {"id": model_id, "type": "model", "display_name": model_id, "created_at": stamp}


def anthropic_list(owners: Mapping[str, str], created: float) -> bytes:
    """The list in Anthropic's shape, for clients that send ``anthropic-version``."""
    data = [anthropic_model(m, created) for m in sorted(owners)]
    return orjson.dumps({
        "data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    })  # fmt: skip


def gemini_model(model_id: str, owner: str) -> dict[str, Any]:
    """One model in Gemini's shape (google-genai's ``models.get`` and ``models.list``)."""
    return {
        "name": f"models/{model_id}", "displayName": model_id,
        "description": f"{model_id}, served by {owner} through cliproxy",
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
    }  # fmt: skip


def gemini_list(owners: Mapping[str, str]) -> bytes:
    return orjson.dumps({"models": [gemini_model(m, owner) for m, owner in sorted(owners.items())]})


def listed(shape: str, owners: Mapping[str, str], created: float) -> bytes:
    """The list in the shape of the client format named ``shape`` (a codec's name)."""
    if shape == ANTHROPIC_SHAPE:
        return anthropic_list(owners, created)
    if shape == DEFAULT_SHAPE:
        return openai_list(owners, created)
    return gemini_list(owners)


def prebuilt(owners: Mapping[str, str], created: float) -> dict[str, bytes]:
    """The full lists a snapshot keeps, built with it."""
    return {DEFAULT_SHAPE: openai_list(owners, created), ANTHROPIC_SHAPE: anthropic_list(owners, created)}
