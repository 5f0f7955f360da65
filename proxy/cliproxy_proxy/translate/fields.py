"""Typed reads of a client's JSON body for the decoders: a wrong type is the client's error (a 400), never a crash.

Each decoder reads its wire through these, so the canonical ``Request`` only ever holds the types it declares and
no encoder meets a list where it expects a number. ``where`` names the field in the client's own terms.
Free-form JSON (tool schemas, tool arguments, function responses) is bounded in depth: encoders recurse into it
and orjson refuses to write more than 254 levels.
"""

from __future__ import annotations

import math
from typing import Any

from .canonical import TranslationError
from .canonical import bounded as bounded  # the depth check, for free-form values that are not objects

_INT_RANGE = range(-(2**63), 2**63)


def text(value: Any, where: str, default: str = "") -> str:
    """A string field; absent (or null) is ``default``."""
    if value is None:
        return default
    if not isinstance(value, str):
        raise TranslationError(f"{where}: must be a string")
    return value


def optional_text(value: Any, where: str) -> str | None:
    return None if value is None else text(value, where)


def integer(value: Any, where: str) -> int | None:
    """An integer field (``64.0`` counts, as JSON does not tell them apart); absent is ``None``."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value not in _INT_RANGE:
        raise TranslationError(f"{where}: must be an integer")
    return value


def number(value: Any, where: str) -> float | None:
    """A number field; absent is ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TranslationError(f"{where}: must be a number")
    return value


def flag(value: Any, where: str) -> bool | None:
    """A boolean field; absent is ``None``."""
    if value is not None and not isinstance(value, bool):
        raise TranslationError(f"{where}: must be true or false")
    return value


def array(value: Any, where: str) -> list[Any]:
    """A list field; absent is empty."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise TranslationError(f"{where}: must be a list")
    return value


def texts(value: Any, where: str) -> list[str]:
    """One string or a list of them (stop sequences); absent is empty."""
    if isinstance(value, str):
        return [value]
    items = array(value, where)
    if not all(isinstance(item, str) for item in items):
        raise TranslationError(f"{where}: must be a string or a list of strings")
    return items


def mapping(value: Any, where: str) -> dict[str, Any]:
    """An object field; absent is empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TranslationError(f"{where}: must be an object")
    return value


def json_object(value: Any, where: str) -> dict[str, Any]:
    """A free-form JSON object (a schema, arguments) that encoders may walk and re-serialise safely."""
    if not isinstance(value, dict):
        raise TranslationError(f"{where}: must be an object")
    return bounded(value, where)
