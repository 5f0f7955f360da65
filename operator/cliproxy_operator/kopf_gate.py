"""kopf's start-up index gate, without waking every waiting object each time one more object is indexed.

kopf holds every object's handlers until the index handlers have seen every object: a ``ToggleSet(all)`` with a
toggle per kind still being listed and per object still being indexed. Adding or dropping a toggle wakes every
task waiting on the set, and by then each object indexed so far waits there: a start with N objects costs about
N² wake-ups. 2,000 routes in 200 namespaces (about 3,000 objects) kept a restarted operator busy for minutes
before its first watch, and 2,000 bare waiters take 49 s on a loaded 2-core machine against 0.9 s for 250.

Adding or dropping a toggle changes nothing a waiter can see unless the set's overall state flips (no one waits
on a toggle that is being added or dropped), so only a flip notifies here. Toggles turned on or off keep
kopf's own behaviour. :func:`install` patches kopf's class in place once, and leaves a kopf whose internals
moved on untouched (the gate then works as before, only slower).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kopf._cogs.aiokits import aiotoggles

log = logging.getLogger("cliproxy.operator")


async def _make_toggle(self: Any, __val: bool = False, *, name: str | None = None) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggles(self: Any, toggles: Iterable[aiotoggles.Toggle]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


async def _drop_toggle(self: Any, toggle: aiotoggles.Toggle) -> None:
    await _drop_toggles(self, [toggle])


def install() -> bool:
    """Patch ``ToggleSet`` to notify on flips only; False when this kopf's toggle set is not the one known."""
    cls: Any = aiotoggles.ToggleSet
    if getattr(cls, "_notifies_on_flips_only", False):
        return True
    probe = cls(all)
    if not all(hasattr(probe, a) for a in ("_condition", "_toggles", "make_toggle", "drop_toggle", "drop_toggles")):
        log.warning("kopf's ToggleSet changed: its start-up gate is left as it is (slow with many objects)")
        return False
    cls.make_toggle, cls.drop_toggle, cls.drop_toggles = _make_toggle, _drop_toggle, _drop_toggles
    cls._notifies_on_flips_only = True
    return True
