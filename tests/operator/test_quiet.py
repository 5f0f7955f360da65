"""The operator writes only what changed, once, under its own name (issue 13), counted on the API backend."""

from __future__ import annotations

from typing import Any

from .kube import CONFIGMAPS, EVENTS, ROUTES, SECRETS, Cluster, OperatorRunner, wait_for
from .objects import WITHIN, basic_setup, condition, route, wait_condition


async def _warnings(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return [e for e in await cluster.events(name) if e.get("type") == "Warning"]


async def test_one_event_per_problem_and_transition_times_that_stay(cluster: Cluster, operator: OperatorRunner) -> None:
    await basic_setup(cluster, operator)
    await cluster.create(ROUTES, route("broken", "ghost", models=("x/y",)))
    broken = await wait_condition(cluster, operator, ROUTES, "broken", "Ready", "False", "CredentialNotFound")
    await wait_for(lambda: _warnings(cluster, "broken"), WITHIN, message=operator.describe)
    team_a = await cluster.get(ROUTES, "team-a")
    since = condition(team_a, "Ready")["lastTransitionTime"]
    for i in range(3):  # re-renders of the namespace: the problem stays the same
        await cluster.patch(ROUTES, "team-a", {"spec": {"models": [{"name": f"openai/gpt-{i}"}]}})
        await cluster.patch(ROUTES, "broken", {"metadata": {"labels": {"touch": str(i)}}})
    await wait_for(lambda: _observed(cluster, "team-a", 4), WITHIN, message=operator.describe)
    await cluster.settle()
    assert len(await _warnings(cluster, "broken")) == 1, "one Warning Event per distinct problem"
    team_a = await cluster.get(ROUTES, "team-a")
    assert condition(team_a, "Ready")["lastTransitionTime"] == since  # still Ready: no transition
    assert condition(await cluster.get(ROUTES, "broken"), "Ready") == condition(broken, "Ready")


async def _observed(cluster: Cluster, name: str, generation: int) -> bool:
    obj = await cluster.get(ROUTES, name)
    return bool(obj and (obj.get("status") or {}).get("observedGeneration") == generation)


async def test_every_write_names_the_field_manager(cluster: Cluster, operator: OperatorRunner) -> None:
    if cluster.emulator is None:
        return  # the recording proxy of envtest keeps no query parameters
    await basic_setup(cluster, operator)
    await cluster.create(ROUTES, route("broken", "ghost", models=("x/y",)))  # an Event too
    await wait_for(lambda: _warnings(cluster, "broken"), WITHIN, message=operator.describe)
    await cluster.settle()
    writes = [r for r in cluster.emulator._requests if r.method in ("POST", "PUT", "PATCH", "DELETE")
              and dict(r.headers).get("User-Agent") != "cliproxy-tests"]  # fmt: skip
    kinds = {f"{r.resource}/{r.subresource}" if r.subresource else r.resource for r in cluster.requests(writes=True)}
    assert {CONFIGMAPS, SECRETS, EVENTS, f"{ROUTES}/status"} <= kinds  # every kind of write was made
    assert writes and all(r.params.get("fieldManager") == "cliproxy-operator" for r in writes), [
        (r.method, r.url.path, r.params) for r in writes if r.params.get("fieldManager") != "cliproxy-operator"
    ]
    assert cluster.writes(CONFIGMAPS) == 1 and cluster.writes(SECRETS) == 1  # created once, never rewritten
