"""cliproxyapi++'s thinking suffix: ``model(8192)`` asks for a budget, ``model(high)`` for a level."""

from __future__ import annotations

import re

from .canonical import THINKING_LEVELS, Reasoning

_SUFFIX = re.compile(r"^(?P<base>.+)\((?P<value>[A-Za-z]+|\d+)\)$")


def split_thinking_suffix(model: str) -> tuple[str, Reasoning | None]:
    """The model without its suffix and the reasoning it asks for; unknown suffixes are left in place."""
    match = _SUFFIX.match(model)
    if match is None:
        return model, None
    value = match["value"].lower()
    if value.isdigit():
        return match["base"], Reasoning(budget=int(value))
    if value in THINKING_LEVELS:
        return match["base"], Reasoning(budget=THINKING_LEVELS[value], effort=value)
    return model, None
