"""kopf's start-up index gate notifies its waiters when it opens or closes, not once per object (issue 13).

The start-up pattern of kopf's queueing: a toggle per kind being listed and per object being indexed; each
object's worker drops its toggle once indexed and then waits for the whole set. Counted: how often the set's
condition wakes its waiters. kopf's own set wakes every waiter twice per object (minutes at 3,000 objects).
"""

from __future__ import annotations

import asyncio
from typing import Any

from kopf._cogs.aiokits import aiotoggles

from cliproxy_operator import kopf_gate

OBJECTS = 300


def _counting(gate: Any) -> list[int]:
    calls = [0]
    notify_all = gate._condition.notify_all

    def counted() -> None:
        calls[0] += 1
        notify_all()

    gate._condition.notify_all = counted
    return calls


async def test_the_index_gate_wakes_its_waiters_when_it_opens_not_per_object() -> None:
    assert kopf_gate.install()
    gate = aiotoggles.ToggleSet(all)
    wakeups = _counting(gate)
    listing = await gate.make_toggle(name="routes@all namespaces")
    opened = []

    async def worker(toggle: aiotoggles.Toggle, index: int) -> None:
        await gate.drop_toggle(toggle)  # indexed
        await gate.wait_for(True)  # then held until every object is
        opened.append(index)

    workers = []
    for index in range(OBJECTS):
        toggle = await gate.make_toggle(name=f"object {index}")
        workers.append(asyncio.create_task(worker(toggle, index)))
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not opened, "the gate opened before the kind's list was done"
    await gate.drop_toggle(listing)
    await asyncio.wait_for(asyncio.gather(*workers), 30)
    assert sorted(opened) == list(range(OBJECTS))
    assert wakeups[0] <= 2, f"{wakeups[0]} wake-ups of every waiter for {OBJECTS} objects"


async def test_a_member_toggle_turned_on_still_wakes_the_set_waiters() -> None:
    """kopf's operator pause (peering) turns member toggles on and off: that keeps kopf's behaviour."""
    kopf_gate.install()
    paused = aiotoggles.ToggleSet(any)
    peer = await paused.make_toggle(name="peer")
    waiter = asyncio.create_task(paused.wait_for(True))
    await asyncio.sleep(0)
    await peer.turn_to(True)
    await asyncio.wait_for(waiter, 30)
    await paused.drop_toggle(peer)
    assert paused.is_off()
