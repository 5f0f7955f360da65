"""The operator's request budget, counted on the emulator: 20 routes in 4 namespaces (``make bench`` runs 2,000).

Bounds from issue 13: at most 3 writes per route from create to settled, a restart of a settled cluster writes
nothing and lists each kind at most once, and deleting the namespaces costs no write at all (none refused).
"""

from __future__ import annotations

import pytest

from . import scale
from .kube import Cluster, OperatorRunner


async def test_writes_per_route_restart_and_namespace_deletion(cluster: Cluster, operator: OperatorRunner) -> None:
    if cluster.kind != "emulator":
        pytest.skip("namespace deletion needs a namespace controller (envtest runs none)")

    async def start() -> None:
        if not operator.running:
            await operator.start()

    figures = await scale.run(
        cluster, start, operator.stop, namespaces=4, routes_per_namespace=5, cpu=operator.cpu_seconds
    )
    report = scale.describe(figures)
    assert figures.writes_per_route <= 3, report
    assert figures.restart_writes == 0, report
    assert figures.restart_lists and max(figures.restart_lists.values()) == 1, report
    assert figures.deletion_writes == 0, report
