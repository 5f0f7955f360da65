"""Statuses as pure functions: conditions against the status last written, and whether a patch is due.

``lastTransitionTime`` is the time the condition's status changed, never the time it was last computed: it is
carried over from the previous status while the condition keeps its status.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .render import Problem

Wanted = tuple[str, bool, str, str]  # condition type, ok, reason, message


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(wanted: Wanted, previous: list[Mapping[str, Any]], generation: int | None) -> dict[str, Any]:
    kind, ok, reason, message = wanted
    status = "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == kind), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    result = {"type": kind, "status": status, "reason": reason, "message": message,
              "lastTransitionTime": since or now()}  # fmt: skip
    if generation is not None:
        result["observedGeneration"] = generation
    return result


def conditions(previous: Mapping[str, Any], generation: int | None, *wanted: Wanted) -> list[dict[str, Any]]:
    old = list(previous.get("conditions") or [])
    return [condition(w, old, generation) for w in wanted]


def summary(problems: list[Problem], ok_reason: str, ok_message: str) -> tuple[bool, str, str]:
    if not problems:
        return True, ok_reason, ok_message
    return False, problems[0].reason, "; ".join(p.message for p in problems)


def unchanged(previous: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """True when patching ``status`` over ``previous`` would change nothing."""
    return all(previous.get(k) == v for k, v in status.items())


def new_problems(problems: list[Problem], previous: Mapping[str, Any], posted: set[Problem]) -> list[Problem]:
    """Problems that deserve a Warning Event: not posted by this process, nor already in the old status."""
    said = " ".join(str(c.get("message")) for c in previous.get("conditions") or [])
    return [p for p in dict.fromkeys(problems) if p not in posted and p.message not in said]
