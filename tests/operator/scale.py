"""Many routes in many namespaces against the emulator, counting every request the operator makes.

Shared by ``tests/operator/test_scale.py`` (a small cluster, asserting the bounds) and ``bench/operator_bench.py``
(2,000 routes in 200 namespaces, printing the figures). The operator is started and stopped through the callables
given, so the test runs it in a thread and the bench as its own process (to measure its memory alone).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .kube import CREDENTIALS, ROUTES, SECRETS, TEST_AGENT, Cluster, Recorded, b64, get_object, matching, wait_for

NAMESPACES = "v1/namespaces"
POLL = 0.1  # seconds between looks at the request log (and the operator's CPU time)
BUSY_CPU = 0.02  # CPU seconds within one look that count as busy (an idle operator uses next to none)


@dataclass
class Figures:
    routes: int
    namespaces: int
    create_writes: int = 0
    create_reads: int = 0
    ready_seconds: float = 0.0
    restart_writes: int = 0
    restart_lists: dict[str, int] = field(default_factory=dict)
    restart_quiet_seconds: float = 0.0
    deletion_writes: int = 0
    deletion_refused: int = 0  # of those writes, how many the API refused
    writes_by_kind: dict[str, int] = field(default_factory=dict)
    deletion_writes_by_kind: dict[str, int] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # the operator's, per phase (when it can be read)

    @property
    def writes_per_route(self) -> float:
        return self.create_writes / self.routes

    @property
    def reads_per_route(self) -> float:
        return self.create_reads / self.routes


def _operator_requests(cluster: Cluster, since: int) -> list[Recorded]:
    return matching(cluster.log()[since:], operator_only=True)


async def quiet(cluster: Cluster, since: int, quiet_for: float = 1.0, within: float = 120.0,
                started: float | None = None, cpu: Callable[[], float] | None = None) -> float:  # fmt: skip
    """Wait until the operator sent no request (but watches) for ``quiet_for`` s, and used no CPU to speak of
    when ``cpu`` reads its CPU seconds (a restart indexes for seconds before its first read); the time it was
    last busy after ``started`` (a monotonic time; now by default)."""
    started = time.monotonic() if started is None else started
    last_count, last_change = -1, time.monotonic()
    last_cpu = cpu() if cpu is not None else 0.0

    def calm() -> bool:
        nonlocal last_count, last_change, last_cpu
        count = len([r for r in _operator_requests(cluster, since) if not r.watch])
        used = cpu() if cpu is not None else 0.0
        if count != last_count or used - last_cpu > BUSY_CPU:
            last_count, last_change = count, time.monotonic()
        last_cpu = used
        return time.monotonic() - last_change >= quiet_for

    await wait_for(calm, within, interval=POLL, message="the operator kept sending requests or computing")
    return last_change - started


def namespace_names(count: int, prefix: str) -> list[str]:
    return [f"{prefix}-{i:03d}" for i in range(count)]


async def populate(cluster: Cluster, namespaces: list[str], routes_per_namespace: int) -> None:
    """In each namespace: a Namespace object, a Secret, a credential over it, and its routes, as a user applies."""
    for namespace in namespaces:
        await cluster.request("POST", "/api/v1/namespaces", json_body={"metadata": {"name": namespace}})
        opted_in = {"name": "keys", "labels": {"cliproxy.io/credential": "true"}}
        await cluster.create(SECRETS, {"metadata": opted_in, "data": {"k": b64("sk-or-x")}}, namespace)
        credential = {"provider": "openrouter", "apiKeys": [{"secretKeyRef": {"name": "keys", "key": "k"}}]}
        await cluster.create(CREDENTIALS, {"metadata": {"name": "or"}, "spec": credential}, namespace)
        for i in range(routes_per_namespace):
            spec = {"credentials": [{"name": "or"}], "models": [{"name": f"vendor/model-{i}"}]}
            await cluster.create(ROUTES, {"metadata": {"name": f"r{i}"}, "spec": spec}, namespace)


def all_ready(cluster: Cluster, namespaces: list[str], routes_per_namespace: int) -> bool:
    """Read from the emulator's memory, without copies: polling 2,000 routes must not starve the operator."""
    assert cluster.emulator is not None
    wanted = {(n, f"r{i}") for n in namespaces for i in range(routes_per_namespace)}
    for (resource, namespace, name), obj in list(cluster.emulator.objects.items()):
        if (namespace, name) in wanted and resource.plural == "providerroutes" and not obj.deleted:
            conditions = (obj.raw.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                wanted.discard((namespace, name))
    return not wanted


def _writes(requests: list[Recorded]) -> list[Recorded]:
    return [r for r in requests if r.write]


def _by_kind(writes: list[Recorded]) -> dict[str, int]:
    kinds = (f"{r.method} {r.resource}" + (f"/{r.subresource}" if r.subresource else "") for r in writes)
    return dict(collections.Counter(kinds))


async def run(
    cluster: Cluster,
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    namespaces: int,
    routes_per_namespace: int,
    prefix: str = "scale",
    say: Callable[[str], None] = lambda _: None,
    cpu: Callable[[], float] | None = None,
) -> Figures:
    """Create, restart, delete; ``cpu`` reads the operator's CPU seconds (it counts as quiet only when idle)."""
    names = namespace_names(namespaces, prefix)
    figures = Figures(routes=namespaces * routes_per_namespace, namespaces=namespaces)
    used = cpu or (lambda: 0.0)
    since = cluster.mark()
    await start()
    began = used()
    say("operator watching; applying the routes")
    await populate(cluster, names, routes_per_namespace)
    applied = time.monotonic()
    say("all applied; waiting for Ready")
    await wait_for(lambda: all_ready(cluster, names, routes_per_namespace), 300, interval=0.5,
                   message="not every route became Ready")  # fmt: skip
    figures.ready_seconds = time.monotonic() - applied
    await quiet(cluster, since, cpu=cpu)
    figures.cpu_seconds["create"] = used() - began
    created = _operator_requests(cluster, since)
    figures.create_writes = len(_writes(created))
    figures.create_reads = len([r for r in created if r.method == "GET" and not r.watch and r.resource])
    figures.writes_by_kind = _by_kind(_writes(created))

    say(f"settled: {figures.create_writes} writes; restarting the operator")
    await stop()
    since = cluster.mark()
    restarted_at = time.monotonic()  # quiet is timed from the process start: kopf lists before it watches
    await start()
    figures.restart_quiet_seconds = await quiet(cluster, since, quiet_for=2.0, within=1200, started=restarted_at,
                                                 cpu=cpu)  # fmt: skip
    figures.cpu_seconds["restart"] = used()  # a new process: from its start
    restarted = _operator_requests(cluster, since)
    figures.restart_writes = len(_writes(restarted))
    lists = [str(r.resource) for r in restarted if r.method == "GET" and r.name is None and not r.watch and r.resource]
    figures.restart_lists = dict(collections.Counter(lists))

    say(f"restart quiet after {figures.restart_quiet_seconds:.1f} s; deleting the namespaces")
    since, began = cluster.mark(), used()
    assert cluster.emulator is not None
    refused_before = len(cluster.emulator.refused)
    for namespace in names:
        await cluster.request("DELETE", f"/api/v1/namespaces/{namespace}")

    async def gone() -> bool:
        return all([await get_object(cluster.emulator, NAMESPACES, None, n) is None for n in names])  # type: ignore[arg-type]

    await wait_for(gone, 120, interval=0.2, message="the namespaces were not deleted")
    await quiet(cluster, since, cpu=cpu)
    figures.cpu_seconds["deletion"] = used() - began
    deleting = [r for r in _writes(_operator_requests(cluster, since)) if r.namespace in names]
    figures.deletion_writes, figures.deletion_writes_by_kind = len(deleting), _by_kind(deleting)
    figures.deletion_refused = len([1 for namespace, agent in cluster.emulator.refused[refused_before:]
                                    if namespace in names and agent != TEST_AGENT])  # fmt: skip
    await stop()
    return figures


def describe(figures: Figures) -> dict[str, Any]:
    return {
        "routes": figures.routes, "namespaces": figures.namespaces,
        "writes_per_route": round(figures.writes_per_route, 2), "reads_per_route": round(figures.reads_per_route, 2),
        "ready_seconds": round(figures.ready_seconds, 2), "restart_writes": figures.restart_writes,
        "restart_lists": figures.restart_lists, "restart_quiet_seconds": round(figures.restart_quiet_seconds, 2),
        "deletion_writes": figures.deletion_writes, "deletion_refused": figures.deletion_refused,
        "writes_by_kind": figures.writes_by_kind,
        "deletion_writes_by_kind": figures.deletion_writes_by_kind,
        "operator_cpu_seconds": {k: round(v, 2) for k, v in figures.cpu_seconds.items()},
    }  # fmt: skip
