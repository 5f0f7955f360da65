"""What the operator leaves out of kopf's per-event work (issue 13): the diff base and the success lines."""

from __future__ import annotations

import logging

from kopf._core.intents import registries

from cliproxy_operator.kopf_quiet import QuietSuccesses

from .kube import _fresh_import


def test_no_handler_needs_the_diff_base_it_no_longer_builds() -> None:
    """NoDiffBase is right only while every handler is an event handler, an index, a timer or an activity."""
    registry = registries.SmartOperatorRegistry()
    _fresh_import("cliproxy_operator.handlers", registry)
    assert registry._watching.get_all_handlers() and registry._indexing.get_all_handlers()
    assert not registry._changing.get_all_handlers(), "a change handler needs kopf's diff base: restore it"


def _record(level: int, message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("kopf.objects", level, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_only_the_per_event_success_lines_are_dropped() -> None:
    quiet = QuietSuccesses()
    assert not quiet.filter(_record(logging.INFO, "Handler 'resource_changed' succeeded.", k8s_skip=True))
    assert quiet.filter(_record(logging.INFO, "Timer 'keep_token_fresh' succeeded.", k8s_skip=False))  # an Event
    assert quiet.filter(_record(logging.ERROR, "Handler 'resource_changed' failed.", k8s_skip=True))
    assert quiet.filter(_record(logging.INFO, "token refreshed", k8s_skip=True))
