"""CRD properties a real API server needs for GitOps tools and honest error messages (issue 13).

On a cluster (the emulator, whose server-side apply follows structured-merge-diff in ``ssa.py``, and envtest's
real API server): ``kubectl apply`` (client-side), then Argo CD and Flux applying server-side as two managers,
share a route's ``spec.credentials``, and a CEL rule's message reaches the client. What decides the outcome on a
real server is in the schema, and is asserted structurally too:

* a list of named items is ``x-kubernetes-list-type: map`` keyed by its name, so that a second server-side apply
  manager merges entries instead of conflicting on the whole list (the server defaults ``priority: 0`` into
  ``spec.credentials``, which made the list differ from every manager's applied copy);
* map keys are required (or defaulted), as the API server demands of list-map keys;
* no CEL rule has ``reason: FieldValueDuplicate``: the API server then reports "Duplicate value" and drops the
  rule's message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from .kube import ROUTES, ApiError, Cluster, load_crds, resource_path

Json = dict[str, Any]


def _arrays(node: Json, path: str = "") -> Iterator[tuple[str, Json]]:
    if node.get("type") == "array":
        yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _arrays(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _arrays(node["items"], f"{path}[]")


def _rules(node: Json, path: str = "") -> Iterator[tuple[str, Json]]:
    for rule in node.get("x-kubernetes-validations") or []:
        yield path, rule
    for name, child in (node.get("properties") or {}).items():
        yield from _rules(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _rules(node["items"], f"{path}[]")


SCHEMAS = {
    crd["spec"]["names"]["kind"]: version["schema"]["openAPIV3Schema"]
    for crd in load_crds()
    for version in crd["spec"]["versions"]
}


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_named_lists_merge_by_name_under_server_side_apply(kind: str) -> None:
    for path, array in _arrays(SCHEMAS[kind]):
        items = array.get("items") or {}
        if "name" not in (items.get("required") or []) and "type" not in (items.get("required") or []):
            continue
        if array.get("x-kubernetes-list-type") == "atomic":  # declared so on purpose (no unique key), and said why
            continue
        assert array.get("x-kubernetes-list-type") == "map", f"{kind}{path}: a list of named items must be a map"
        for key in array.get("x-kubernetes-list-map-keys") or []:
            field = items["properties"][key]
            assert key in items.get("required", []) or "default" in field, f"{kind}{path}: map key {key} optional"
            assert field.get("type") in ("string", "integer", "boolean"), f"{kind}{path}: map key {key} not scalar"
        assert array.get("x-kubernetes-list-map-keys"), f"{kind}{path}: a map list needs its keys"


def test_the_route_credentials_list_is_keyed_by_name() -> None:
    credentials = SCHEMAS["ProviderRoute"]["properties"]["spec"]["properties"]["credentials"]
    assert credentials["x-kubernetes-list-map-keys"] == ["name"]


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_cel_rules_keep_their_message(kind: str) -> None:
    for path, rule in _rules(SCHEMAS[kind]):
        assert rule.get("reason") != "FieldValueDuplicate", f"{kind}{path}: the server drops this rule's message"
        assert rule.get("message") or rule.get("messageExpression"), f"{kind}{path}: a rule says why it fails"


APPLY = "application/apply-patch+yaml"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _manifest(spec: Json) -> Json:
    return {"apiVersion": "cliproxy.io/v1alpha1", "kind": "ProviderRoute", "metadata": {"name": "r"}, "spec": spec}


async def _apply(cluster: Cluster, spec: Json, manager: str) -> Json:
    path = resource_path(ROUTES, cluster.namespace, "r")
    return await cluster.request("PATCH", path, json_body=_manifest(spec), params={"fieldManager": manager},
                                 content_type=APPLY)  # fmt: skip


async def test_client_side_apply_then_two_server_side_managers_share_the_credentials(cluster: Cluster) -> None:
    """Argo CD takes over a kubectl-applied route and Flux adds a credential: no conflict on the list (issue 13)."""
    spec = {"credentials": [{"name": "a", "priority": 2}], "models": [{"name": "m"}]}
    body = _manifest(spec)
    body["metadata"]["annotations"] = {LAST_APPLIED: json.dumps(body)}
    await cluster.request("POST", resource_path(ROUTES, cluster.namespace), json_body=body,
                          params={"fieldManager": "kubectl-client-side-apply"})  # fmt: skip

    await _apply(cluster, spec, "argocd-controller")  # the same manifest, server-side: it shares the fields
    added = await _apply(cluster, {"credentials": [{"name": "b", "priority": 1}]}, "flux-team-b")
    assert [(c["name"], c["priority"]) for c in added["spec"]["credentials"]] == [("a", 2), ("b", 1)]
    flux = [e for e in added["metadata"]["managedFields"] if e["manager"] == "flux-team-b"]
    assert flux and flux[0]["operation"] == "Apply"
    assert 'k:{"name":"b"}' in flux[0]["fieldsV1"]["f:spec"]["f:credentials"]

    again = await _apply(cluster, spec, "argocd-controller")  # Argo's manifest knows nothing of b: b stays
    assert [c["name"] for c in again["spec"]["credentials"]] == ["a", "b"]
    with pytest.raises(ApiError) as conflict:  # a value another manager set is not silently taken over
        await _apply(cluster, {"credentials": [{"name": "a", "priority": 5}]}, "flux-team-b")
    assert conflict.value.status == 409 and conflict.value.body["reason"] == "Conflict"


async def test_a_cel_rule_message_reaches_the_client(cluster: Cluster) -> None:
    spec = {"prefix": "team", "credentials": [{"name": "a"}], "models": [{"name": "m", "alias": "x/y"}]}
    with pytest.raises(ApiError) as invalid:
        await cluster.create(ROUTES, {"metadata": {"name": "slash"}, "spec": spec})
    assert invalid.value.status == 422
    assert "models[].alias must not contain '/' when prefix is set" in invalid.value.body["message"]
