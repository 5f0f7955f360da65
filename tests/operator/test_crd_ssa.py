"""CRD properties a real API server needs for GitOps tools and honest error messages (issue 13).

Checked structurally: the emulator has no server-side apply merge semantics (it answers apply patches with 415),
so a test of two field managers would exercise nothing there. What decides the outcome on a real server is in
the schema, and is asserted here:

* a list of named items is ``x-kubernetes-list-type: map`` keyed by its name, so that a second server-side apply
  manager merges entries instead of conflicting on the whole list (the server defaults ``priority: 0`` into
  ``spec.credentials``, which made the list differ from every manager's applied copy);
* map keys are required (or defaulted), as the API server demands of list-map keys;
* no CEL rule has ``reason: FieldValueDuplicate``: the API server then reports "Duplicate value" and drops the
  rule's message.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .kube import load_crds

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
