"""The CRDs in deploy/crds and the manifests in deploy/examples, checked without a cluster.

* Each CRD is validated against Kubernetes' own CustomResourceDefinition schema (``kubernetes-validate``, strict)
  and against the extra rules the API server applies to CRD schemas (structural schema, allowed keywords,
  list-type maps, defaults, printer columns, CEL rule fields).
* The examples are defaulted and validated the way the API server would: the OpenAPI v3 schema is converted to a
  JSON Schema (unknown fields rejected, as ``kubectl apply``'s strict field validation does) and checked with
  ``jsonschema``; the CEL ``x-kubernetes-validations`` are evaluated with ``cel-python`` at each schema node.
* Crafted invalid objects show that each schema constraint and each CEL rule rejects what it should.

The rules use only standard CEL (``has``, ``size``, ``in``, ``all``, ``exists_one``, ``contains``), which
cel-python evaluates; no Kubernetes-specific CEL library function is used. What cannot be checked offline is the
API server's CEL cost estimate: instead every list under ``spec`` is bounded (``maxItems``) and every string inside
a list has a ``maxLength``, which is what the estimator needs.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from cliproxy_operator.secret_rules import OPT_IN_LABEL, opted_in
from cliproxy_proxy.catalog import KINDS
from cliproxy_proxy.config import _PREFIX_PATTERN

from .kube import apply_defaults

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "deploy" / "crds"
EXAMPLES_DIR = ROOT / "deploy" / "examples"
K8S_VERSION = "1.29"  # the oldest release the CRDs support (CEL rules with reason and fieldPath)
GROUP = "cliproxy.io"
VERSION = "v1alpha1"

Json = dict[str, Any]


# --------------------------------------------------------------------------------------------------------------
# Loading


def _load_all(path: Path) -> list[Json]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _crd_files() -> list[Path]:
    return sorted(CRD_DIR.glob("*.yaml"))


def _load_crds() -> dict[str, Json]:
    crds: dict[str, Json] = {}
    for path in _crd_files():
        (doc,) = _load_all(path)
        crds[doc["spec"]["names"]["kind"]] = doc
    return crds


CRDS = _load_crds()
KINDS_UNDER_TEST = ("ClientKey", "ProviderCredential", "ProviderRoute")


def _example_docs() -> list[tuple[str, Json]]:
    return [(path.name, doc) for path in sorted(EXAMPLES_DIR.glob("*.yaml")) for doc in _load_all(path)]


EXAMPLES = _example_docs()
CUSTOM_EXAMPLES = [(f"{file}:{doc['metadata']['name']}", doc) for file, doc in EXAMPLES if doc["kind"] in CRDS]


def _version(crd: Json) -> Json:
    (version,) = crd["spec"]["versions"]
    return version


def _schema(kind: str) -> Json:
    return _version(CRDS[kind])["schema"]["openAPIV3Schema"]


def _walk(node: Json, path: str = "") -> Iterator[tuple[str, Json]]:
    """Every schema node with a readable path (``spec.apiKeys[].secretKeyRef.name``)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")


# --------------------------------------------------------------------------------------------------------------
# The API server's rules for CRD schemas (apiextensions-apiserver validation.go and structural schema), by hand

TYPES = {"object", "array", "string", "integer", "number", "boolean"}
FORBIDDEN_KEYWORDS = {"$ref", "$schema", "id", "definitions", "dependencies", "additionalItems", "patternProperties"}
JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
NOT_IN_JUNCTORS = {"type", "default", "description", "additionalProperties", "nullable"}
RULE_REASONS = {"FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"}


def structural_problems(node: Json, path: str = "") -> list[str]:
    """Why ``node`` is not an allowed structural CRD schema; empty when it is."""
    where = path or "(root)"
    problems = [f"{where}: {key} is not allowed in CRD schemas" for key in sorted(FORBIDDEN_KEYWORDS & node.keys())]
    kind = node.get("type")
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if preserve is not None and preserve is not True:
        problems.append(f"{where}: x-kubernetes-preserve-unknown-fields must be true or absent")
    if kind is None and not (preserve or node.get("x-kubernetes-int-or-string")):
        problems.append(f"{where}: type is missing")
    elif kind is not None and kind not in TYPES:
        problems.append(f"{where}: unknown type {kind!r}")
    if node.get("uniqueItems") is True:
        problems.append(f"{where}: uniqueItems cannot be true")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{where}: properties and additionalProperties are mutually exclusive")
    if node.get("additionalProperties") is False:
        problems.append(f"{where}: additionalProperties must not be false")
    if ("properties" in node or "additionalProperties" in node) and kind != "object":
        problems.append(f"{where}: properties on a non-object")
    if kind == "array" and not isinstance(node.get("items"), dict):
        problems.append(f"{where}: an array needs a single items schema")
    if "items" in node and kind != "array":
        problems.append(f"{where}: items on a non-array")
    for name in node.get("required", []):
        if name not in node.get("properties", {}):
            problems.append(f"{where}: required field {name!r} is not declared")
    for junctor in JUNCTORS:
        parts = node.get(junctor, [])
        for part in [parts] if isinstance(parts, dict) else parts:
            for key in sorted(NOT_IN_JUNCTORS & part.keys()):
                problems.append(f"{where}: {key} is not allowed inside {junctor}")
    problems += _list_type_problems(node, where)
    problems += _default_problems(node, where)
    problems += _rule_problems(node, where)
    for name, child in node.get("properties", {}).items():
        problems += structural_problems(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{path}{{}}")
    if isinstance(node.get("items"), dict):
        problems += structural_problems(node["items"], f"{path}[]")
    return problems


def _list_type_problems(node: Json, where: str) -> list[str]:
    list_type = node.get("x-kubernetes-list-type")
    if list_type is None:
        return [f"{where}: list-map-keys without list-type map"] if "x-kubernetes-list-map-keys" in node else []
    if list_type not in ("atomic", "set", "map"):
        return [f"{where}: unknown list-type {list_type!r}"]
    if list_type != "map":
        return []
    items, keys = node.get("items", {}), node.get("x-kubernetes-list-map-keys") or []
    if items.get("type") != "object" or not keys:
        return [f"{where}: list-type map needs object items and list-map-keys"]
    problems = []
    for key in keys:
        field = items.get("properties", {}).get(key)
        if field is None or field.get("type") not in ("string", "integer", "boolean"):
            problems.append(f"{where}: list-map-key {key!r} must be a declared scalar")
        elif key not in items.get("required", []) and "default" not in field:
            problems.append(f"{where}: list-map-key {key!r} must be required or defaulted")
    return problems


def _default_problems(node: Json, where: str) -> list[str]:
    """Defaults must validate against their schema, and enum values must have the node's type."""
    problems = []
    if "default" in node:
        errors = jsonschema.Draft7Validator(to_json_schema(node)).iter_errors(node["default"])
        problems += [f"{where}: default {node['default']!r} is invalid: {error.message}" for error in errors]
    if "type" in node:
        typed = jsonschema.Draft7Validator({"type": node["type"]})
        bad = [value for value in node.get("enum", []) if not typed.is_valid(value)]
        problems += [f"{where}: enum value {value!r} is not of type {node['type']}" for value in bad]
    return problems


def _rule_problems(node: Json, where: str) -> list[str]:
    problems = []
    for rule in node.get("x-kubernetes-validations", []):
        text = rule.get("rule", "")
        try:
            _program(text)
        except celpy.CELParseError as error:
            problems.append(f"{where}: rule {text!r} does not compile: {error}")
        message = rule.get("message", "")
        if not message or "\n" in message:
            problems.append(f"{where}: rule {text!r} needs a one-line message")
        if "reason" in rule and rule["reason"] not in RULE_REASONS:
            problems.append(f"{where}: rule {text!r} has an unknown reason {rule['reason']!r}")
        if "fieldPath" in rule and _resolve_field_path(node, rule["fieldPath"]) is None:
            problems.append(f"{where}: rule {text!r} names an undeclared fieldPath {rule['fieldPath']!r}")
    return problems


def _resolve_field_path(node: Json, field_path: str) -> Json | None:
    """A CEL rule's ``fieldPath`` (``.a.b``, no list indexes) resolved from the rule's node."""
    if not re.fullmatch(r"(\.[A-Za-z_][A-Za-z0-9_]*)+", field_path):
        return None
    for name in field_path.split(".")[1:]:
        found = node.get("properties", {}).get(name)
        if found is None:
            return None
        node = found
    return node


# Fields the API server sets on every object's metadata (ObjectMeta); printer columns may point at them.
OBJECT_META = {"name", "namespace", "uid", "generation", "creationTimestamp", "deletionTimestamp", "labels"}
_JSONPATH_STEP = re.compile(r'\.([A-Za-z_][A-Za-z0-9_]*)|\[((?:[^\]"]|"[^"]*")*)\]')


def resolve_jsonpath(schema: Json, path: str) -> Json | None:
    """The schema node a printer column's JSONPath selects, or None if it selects nothing declared."""
    steps = list(_JSONPATH_STEP.finditer(path))
    if not steps or "".join(step.group(0) for step in steps) != path:
        return None
    if steps[0].group(1) == "metadata":
        names = [step.group(1) for step in steps[1:]]
        return {"type": "string", "format": "date-time"} if names and names[0] in OBJECT_META else None
    node = schema
    for step in steps:
        if step.group(1) is not None:
            found = node.get("properties", {}).get(step.group(1))
        else:  # an index or a filter selects list items; a filter may only test declared item fields
            found = node.get("items") if node.get("type") == "array" else None
            tested = re.findall(r"@\.([A-Za-z_][A-Za-z0-9_]*)", step.group(2))
            if found is None or any(name not in found.get("properties", {}) for name in tested):
                return None
        if found is None:
            return None
        node = found
    return node


# --------------------------------------------------------------------------------------------------------------
# Emulating the API server on an object: defaulting, OpenAPI validation, CEL rules


def to_json_schema(node: Json) -> Json:
    """OpenAPI v3 (Kubernetes flavour) → JSON Schema; undeclared fields rejected unless preserved."""
    out: Json = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "description", "format", "example"):
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        else:
            out[key] = copy.deepcopy(value)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    closed = not node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node
    if node.get("type") == "object" and closed:
        out["additionalProperties"] = False
    return out


def schema_errors(kind: str, obj: Json) -> list[jsonschema.ValidationError]:
    validator = jsonschema.Draft7Validator(to_json_schema(_schema(kind)))
    return sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))


@functools.cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_failures(node: Json, value: Any, path: str = "") -> list[tuple[str, str]]:
    """(path, message) of every failing ``x-kubernetes-validations`` rule, evaluated where the value is present."""
    failures = []
    for rule in node.get("x-kubernetes-validations", []):
        result = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        if not isinstance(result, celpy.celtypes.BoolType):
            raise AssertionError(f"rule {rule['rule']!r} at {path} did not give a bool: {result!r}")
        if not result:
            failures.append((path, rule["message"]))
    if isinstance(value, dict):
        for name, child in node.get("properties", {}).items():
            if name in value:
                failures += cel_failures(child, value[name], f"{path}.{name}" if path else name)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            failures += cel_failures(node["items"], item, f"{path}[{index}]")
    return failures


def admit(
    kind: str, spec: Json, name: str = "a-name"
) -> tuple[Json, list[jsonschema.ValidationError], list[tuple[str, str]]]:
    """Default, schema-validate and CEL-validate an object with ``spec``, as the API server does on create (root
    rules see ``metadata.name``, as there)."""
    obj = apply_defaults(_schema(kind), {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "spec": spec})
    errors = schema_errors(kind, obj)
    return obj, errors, ([] if errors else cel_failures(_schema(kind), {**obj, "metadata": {"name": name}}))


def _messages(kind: str) -> dict[str, str]:
    """Every CEL rule message of a CRD → its rule."""
    return {
        rule["message"]: rule["rule"]
        for _, node in _walk(_schema(kind))
        for rule in node.get("x-kubernetes-validations", [])
    }


# --------------------------------------------------------------------------------------------------------------
# The CRD objects


def test_crd_files_are_named_after_group_and_plural() -> None:
    assert sorted(CRDS) == sorted(KINDS_UNDER_TEST)
    for path in _crd_files():
        (crd,) = _load_all(path)
        names = crd["spec"]["names"]
        assert path.name == f"{GROUP}_{names['plural']}.yaml"
        assert crd["metadata"]["name"] == f"{names['plural']}.{GROUP}"
        assert (crd["apiVersion"], crd["kind"]) == ("apiextensions.k8s.io/v1", "CustomResourceDefinition")


@pytest.mark.parametrize("kind", KINDS_UNDER_TEST)
def test_crd_is_a_valid_kubernetes_object(kind: str) -> None:
    assert kubernetes_validate.validate(CRDS[kind], K8S_VERSION, strict=True) == K8S_VERSION


def test_kubernetes_validate_catches_a_misspelt_schema_keyword() -> None:
    crd = copy.deepcopy(CRDS["ProviderRoute"])
    _version(crd)["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["models"]["maxitems"] = 5
    with pytest.raises(kubernetes_validate.ValidationError, match="maxitems"):
        kubernetes_validate.validate(crd, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("kind", "plural", "singular", "short"),
    [
        ("ProviderCredential", "providercredentials", "providercredential", "pcred"),
        ("ProviderRoute", "providerroutes", "providerroute", "proute"),
        ("ClientKey", "clientkeys", "clientkey", "ckey"),
    ],
)
def test_crd_names_scope_version_and_subresources(kind: str, plural: str, singular: str, short: str) -> None:
    spec = CRDS[kind]["spec"]
    assert (spec["group"], spec["scope"]) == (GROUP, "Namespaced")
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": singular,
        "shortNames": [short],
        "categories": ["cliproxy"],
    }
    version = _version(CRDS[kind])
    assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("kind", KINDS_UNDER_TEST)
def test_schema_is_structural(kind: str) -> None:
    schema = _schema(kind)
    assert structural_problems(schema) == []
    assert schema["required"] == ["spec"]
    assert schema["properties"]["metadata"] == {"type": "object"}  # no restrictions beyond name/generateName


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({"type": "object", "properties": {"a": {"description": "untyped"}}}, "a: type is missing"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems cannot be true"),
        ({"type": "object", "properties": {"a": {"$ref": "#/x", "type": "string"}}}, "a: $ref is not allowed"),
        ({"type": "object", "properties": {}, "additionalProperties": {"type": "string"}}, "mutually exclusive"),
        ({"type": "array"}, "an array needs a single items schema"),
        ({"type": "object", "required": ["b"], "properties": {}}, "required field 'b' is not declared"),
        ({"type": "string", "x-kubernetes-preserve-unknown-fields": False}, "must be true or absent"),
        ({"type": "string", "anyOf": [{"type": "string"}]}, "type is not allowed inside anyOf"),
        ({"type": "string", "default": 3}, "default 3 is invalid"),
        ({"type": "string", "pattern": "^a$", "default": "b"}, "default 'b' is invalid"),
        ({"type": "string", "enum": [True, "False"]}, "enum value True is not of type string"),
        (
            {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"], "items": {}},
            "list-type map needs object items",
        ),
        (
            {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["k"],
                "items": {"type": "object", "properties": {"k": {"type": "string"}}},
            },
            "must be required or defaulted",
        ),
        ({"type": "object", "x-kubernetes-validations": [{"rule": "self.(", "message": "m"}]}, "does not compile"),
        ({"type": "object", "x-kubernetes-validations": [{"rule": "true"}]}, "needs a one-line message"),
        (
            {"type": "object", "x-kubernetes-validations": [{"rule": "true", "message": "m", "fieldPath": ".nope"}]},
            "undeclared fieldPath '.nope'",
        ),
    ],
)
def test_structural_checker_flags_bad_schemas(bad: Json, problem: str) -> None:
    problems = structural_problems(bad)
    assert any(problem in text for text in problems), problems


@pytest.mark.parametrize("kind", KINDS_UNDER_TEST)
def test_printer_columns_point_at_declared_fields_of_the_right_type(kind: str) -> None:
    columns = _version(CRDS[kind])["additionalPrinterColumns"]
    assert [c["name"] for c in columns][-2:] == ["Ready", "Age"]
    for column in columns:
        target = resolve_jsonpath(_schema(kind), column["jsonPath"])
        assert target is not None, column
        if column["type"] == "date":
            assert target.get("format") == "date-time", column
        else:
            assert target["type"] == column["type"], column
    ready = next(c for c in columns if c["name"] == "Ready")
    assert ready["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert next(c for c in columns if c["name"] == "Age")["jsonPath"] == ".metadata.creationTimestamp"


def test_printer_columns_are_the_agreed_ones() -> None:
    def columns(kind: str) -> list[tuple[str, str, str]]:
        return [(c["name"], c["type"], c["jsonPath"]) for c in _version(CRDS[kind])["additionalPrinterColumns"]]

    ready = ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status')
    age = ("Age", "date", ".metadata.creationTimestamp")
    assert columns("ProviderCredential") == [
        ("Provider", "string", ".spec.provider"),
        ("Prefix", "string", ".spec.prefix"),
        ("Keys", "integer", ".status.usableKeys"),
        ready,
        age,
    ]
    assert columns("ProviderRoute") == [
        ("Gateway", "string", ".spec.gateway"),
        ("Prefix", "string", ".spec.prefix"),
        ("Models", "integer", ".status.modelCount"),
        ready,
        age,
    ]
    assert columns("ClientKey") == [  # `kubectl get clientkeys` is the spend report
        ("Gateway", "string", ".spec.gateway"),
        ("Models", "string", ".status.models"),
        ("Period", "string", ".status.usage.period"),
        ("Tokens", "integer", ".status.usage.tokens"),
        ("Spend-USD", "string", ".status.usage.spendUSD"),
        ("Expired", "string", '.status.conditions[?(@.type=="Expired")].status'),
        ready,
        age,
    ]


@pytest.mark.parametrize(
    "path",
    [".spec.nope", ".status.conditions.status", '.status.conditions[?(@.kind=="Ready")].status', "spec.provider"],
)
def test_jsonpath_resolver_rejects_undeclared_paths(path: str) -> None:
    assert resolve_jsonpath(_schema("ProviderCredential"), path) is None


@pytest.mark.parametrize("kind", KINDS_UNDER_TEST)
def test_status_keeps_kopf_fields_and_has_standard_conditions(kind: str) -> None:
    status = _schema(kind)["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    assert status["properties"]["observedGeneration"]["type"] == "integer"
    conditions = status["properties"]["conditions"]
    assert (conditions["x-kubernetes-list-type"], conditions["x-kubernetes-list-map-keys"]) == ("map", ["type"])
    item = conditions["items"]
    assert set(item["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]  # strings, not YAML booleans
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "Rendered",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 2,
    }
    validator = jsonschema.Draft7Validator(to_json_schema(status))
    assert list(validator.iter_errors({"conditions": [condition], "kopf": {"progress": {}}})) == []
    assert list(validator.iter_errors({"conditions": [{**condition, "status": True}]}))
    assert list(validator.iter_errors({"conditions": [{**condition, "reason": "not camel"}]}))


def test_route_status_declares_models_and_count() -> None:
    status = _schema("ProviderRoute")["properties"]["status"]["properties"]
    assert status["models"] == {**status["models"], "type": "array", "items": {"type": "string"}}
    assert status["modelCount"]["type"] == "integer"
    assert _schema("ProviderCredential")["properties"]["status"]["properties"]["usableKeys"]["type"] == "integer"


# --------------------------------------------------------------------------------------------------------------
# The API the operator's render code depends on


def test_credential_spec_fields_and_contract() -> None:
    spec = _schema("ProviderCredential")["properties"]["spec"]
    assert set(spec["properties"]) == {
        "provider", "providerName", "baseURL", "refreshURL", "apiKeys", "tokenSecretRef", "headers", "proxyURL",
        "prefix", "rateLimit", "modelsEndpoint", "vertex", "azure", "bedrock",
    }  # fmt: skip
    assert spec["required"] == ["provider"]
    props = spec["properties"]
    assert set(props["provider"]["enum"]) == set(KINDS)  # exactly the proxy config's provider blocks
    assert len(props["provider"]["enum"]) == len(KINDS)
    assert props["prefix"]["pattern"] == props["providerName"]["pattern"] == _PREFIX_PATTERN
    assert props["prefix"]["maxLength"] == props["providerName"]["maxLength"] == 63
    key_ref = props["apiKeys"]["items"]["properties"]["secretKeyRef"]
    assert props["apiKeys"]["items"]["required"] == ["secretKeyRef"]
    assert key_ref["required"] == props["tokenSecretRef"]["required"] == ["name", "key"]
    assert key_ref["properties"] == props["tokenSecretRef"]["properties"]
    assert props["apiKeys"]["maxItems"] == 64
    assert props["headers"]["maxProperties"] == 32
    assert props["rateLimit"]["properties"]["rpm"]["minimum"] == props["rateLimit"]["properties"]["tpm"]["minimum"] == 1
    assert props["vertex"]["required"] == ["project"]
    assert props["vertex"]["properties"]["location"]["default"] == "us-central1"


def test_route_spec_fields_and_contract() -> None:
    spec = _schema("ProviderRoute")["properties"]["spec"]
    props = spec["properties"]
    assert set(props) == {"gateway", "prefix", "forceModelPrefix", "allowUnauthenticated", "credentials", "models",
                          "excludedModels", "policy", "fallbacks"}  # fmt: skip
    assert props["allowUnauthenticated"] == {**props["allowUnauthenticated"], "type": "boolean", "default": False}
    assert spec["required"] == ["credentials"]
    assert (props["gateway"]["default"], props["gateway"]["maxLength"]) == ("default", 40)
    assert props["prefix"]["pattern"] == _PREFIX_PATTERN
    assert props["forceModelPrefix"] == {**props["forceModelPrefix"], "type": "boolean", "default": False}
    assert (props["credentials"]["minItems"], props["credentials"]["maxItems"]) == (1, 64)
    assert props["credentials"]["items"]["properties"]["priority"]["default"] == 0
    weight = props["credentials"]["items"]["properties"]["weight"]
    assert (weight["minimum"], weight["maximum"], "default" in weight) == (0, 1000, False)  # unset: 1, not stored
    assert (props["fallbacks"]["maxProperties"], props["fallbacks"]["additionalProperties"]["maxItems"]) == (64, 4)
    assert (props["models"]["maxItems"], props["excludedModels"]["maxItems"]) == (512, 256)
    assert set(props["policy"]["properties"]) == {
        "requestRetry", "maxRetryInterval", "maxRetryCredentials", "connectTimeoutSeconds", "readTimeoutSeconds",
    }  # fmt: skip


@pytest.mark.parametrize("kind", KINDS_UNDER_TEST)
def test_spec_lists_are_bounded_for_the_cel_cost_estimator(kind: str) -> None:
    spec = _schema(kind)["properties"]["spec"]
    nodes = list(_walk(spec, "spec"))
    arrays = [path for path, node in nodes if node.get("type") == "array"]
    assert arrays
    assert [path for path, node in nodes if node.get("type") == "array" and "maxItems" not in node] == []
    in_lists = [(path, node) for path, node in nodes if "[]" in path and node.get("type") == "string"]
    assert in_lists
    assert [path for path, node in in_lists if "maxLength" not in node and "enum" not in node] == []


# --------------------------------------------------------------------------------------------------------------
# The examples


def test_examples_are_the_documented_set() -> None:
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in EXAMPLES)
    assert kinds == [
        ("ClientKey", "team-a-app"),
        ("ProviderCredential", "local-vllm"),
        ("ProviderCredential", "openrouter"),
        ("ProviderRoute", "shared"),
        ("ProviderRoute", "team-a"),
        ("Secret", "cliproxy-demo-clients"),
        ("Secret", "cliproxy-demo-keys"),
    ]
    readme = (EXAMPLES_DIR / "README.md").read_text()
    for path in EXAMPLES_DIR.glob("*.yaml"):
        assert path.read_text().startswith("#"), f"{path.name} starts with a comment"
        assert f"`{path.name}`" in readme


@pytest.mark.parametrize(("file", "doc"), EXAMPLES, ids=[f"{f}:{d['metadata']['name']}" for f, d in EXAMPLES])
def test_examples_are_namespace_less_and_well_named(file: str, doc: Json) -> None:
    assert "namespace" not in doc["metadata"], file
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", doc["metadata"]["name"])
    if doc["kind"] in CRDS:
        assert doc["apiVersion"] == f"{GROUP}/{VERSION}"
    else:
        assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION


def test_example_secret_has_two_demo_keys() -> None:
    (secret,) = [doc for _, doc in EXAMPLES if doc["metadata"]["name"] == "cliproxy-demo-keys"]
    assert secret["metadata"]["labels"] == {OPT_IN_LABEL: "true"}  # the owner's opt-in
    assert secret["type"] == "Opaque"
    assert "data" not in secret
    assert len(secret["stringData"]) == 2
    assert all(isinstance(value, str) and value for value in secret["stringData"].values())


@pytest.mark.parametrize(("name", "doc"), CUSTOM_EXAMPLES, ids=[name for name, _ in CUSTOM_EXAMPLES])
def test_example_is_admitted_by_schema_and_cel(name: str, doc: Json) -> None:
    obj, errors, failures = admit(doc["kind"], copy.deepcopy(doc["spec"]))
    assert [e.message for e in errors] == []
    assert failures == []
    assert obj["spec"]["provider" if doc["kind"] == "ProviderCredential" else "gateway"]


def test_example_references_resolve() -> None:
    secrets = {doc["metadata"]["name"]: doc["stringData"] for _, doc in EXAMPLES
               if doc["kind"] == "Secret" and opted_in(doc["metadata"].get("labels"))}  # fmt: skip
    credentials = {doc["metadata"]["name"]: doc["spec"] for _, doc in EXAMPLES if doc["kind"] == "ProviderCredential"}
    routes = {doc["metadata"]["name"]: doc["spec"] for _, doc in EXAMPLES if doc["kind"] == "ProviderRoute"}
    refs = [k["secretKeyRef"] for spec in credentials.values() for k in spec.get("apiKeys", [])]
    refs += [spec["tokenSecretRef"] for spec in credentials.values() if "tokenSecretRef" in spec]
    assert refs
    for ref in refs:
        assert ref["key"] in secrets[ref["name"]], ref
    for route in routes.values():
        for credential in route["credentials"]:
            assert credential["name"] in credentials
    assert {c["name"] for c in routes["shared"]["credentials"]} == set(credentials)


def test_examples_show_what_the_brief_asks_for() -> None:
    credentials = {doc["metadata"]["name"]: doc["spec"] for _, doc in EXAMPLES if doc["kind"] == "ProviderCredential"}
    routes = {doc["metadata"]["name"]: doc["spec"] for _, doc in EXAMPLES if doc["kind"] == "ProviderRoute"}
    assert credentials["openrouter"]["provider"] == "openrouter"
    assert len(credentials["openrouter"]["apiKeys"]) == 2
    assert "prefix" not in credentials["openrouter"]
    vllm = credentials["local-vllm"]
    assert (vllm["provider"], len(vllm["apiKeys"])) == ("openai-compatibility", 1)
    assert vllm["baseURL"].startswith("http")
    assert {route["gateway"] for route in routes.values()} == {"default"}
    team = routes["team-a"]
    assert team["prefix"] == "team-a"
    assert all("alias" in model for model in team["models"])
    assert any("*" in pattern for pattern in team["excludedModels"])
    assert team["policy"]
    priorities = [c["priority"] for c in routes["shared"]["credentials"]]
    assert len(set(priorities)) == 2


def test_defaults_are_applied_like_the_api_server() -> None:
    route, errors, failures = admit("ProviderRoute", {"credentials": [{"name": "a"}, {"name": "b", "priority": 5}]})
    assert (errors, failures) == ([], [])
    assert route["spec"]["gateway"] == "default"
    assert route["spec"]["forceModelPrefix"] is False
    assert [c["priority"] for c in route["spec"]["credentials"]] == [0, 5]
    credential, errors, failures = admit(
        "ProviderCredential",
        {"provider": "vertex-api-key", "apiKeys": [_key()], "vertex": {"project": "my-project"}},
    )
    assert (errors, failures) == ([], [])
    assert credential["spec"]["vertex"] == {"project": "my-project", "location": "us-central1", "auth": "apiKey"}
    assert "vertex" not in admit("ProviderCredential", {"provider": "groq", "apiKeys": [_key()]})[0]["spec"]


# --------------------------------------------------------------------------------------------------------------
# Invalid objects: the OpenAPI schema


def _key(name: str = "keys", key: str = "k1") -> Json:
    return {"secretKeyRef": {"name": name, "key": key}}


def _credential(**fields: Any) -> Json:
    return {"provider": "openrouter", "apiKeys": [_key()], **fields}


def _route(**fields: Any) -> Json:
    return {"credentials": [{"name": "openrouter"}], **fields}


def _set(path: str, value: Any) -> Callable[[Json], Json]:
    """A mutation that sets ``path`` (dotted, list indexes as numbers) in a spec; ``...`` deletes it."""

    def mutate(spec: Json) -> Json:
        parts: list[str | int] = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = spec
        for part in parts[:-1]:
            node = node[part]
        if value is ...:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
        return spec

    return mutate


PC, PR = "ProviderCredential", "ProviderRoute"


def _bad(kind: str, path: str, value: Any, keyword: str, where: str | None = None, **base: Any) -> Any:
    """A case: a valid spec (``base`` on the defaults) with ``path`` set to ``value``, rejected by ``keyword``."""
    spec = _credential(**base) if kind == PC else _route(**base)
    where = path if where is None else where
    return pytest.param(kind, spec, _set(path, value), keyword, where, id=f"{kind}-{where or 'spec'}-{keyword}")


SCHEMA_REJECTS = [
    # _bad(kind, path set in a valid spec, value (... deletes), failing keyword, error path if not `path`, **base)
    _bad(PC, "provider", "openai", "enum"),
    _bad(PC, "provider", ..., "required", ""),
    _bad(PC, "providerName", "-leading-dash", "pattern"),
    _bad(PC, "providerName", "a" * 64, "maxLength"),
    _bad(PC, "baseURL", "ftp://example.com", "pattern"),
    _bad(PC, "baseURL", "https://exa mple.com", "pattern"),
    _bad(PC, "apiKeys.0.secretKeyRef.name", "Bad_Name", "pattern"),
    _bad(PC, "apiKeys.0.secretKeyRef.key", "a/b", "pattern"),
    _bad(PC, "apiKeys.0.secretKeyRef.key", ..., "required", "apiKeys.0.secretKeyRef"),
    _bad(PC, "apiKeys.0", {"name": "keys", "key": "k"}, "required"),
    _bad(PC, "apiKeys", [_key(key=f"k{i}") for i in range(65)], "maxItems"),
    _bad(PC, "tokenSecretRef", {"name": "t"}, "required", provider="kiro", apiKeys=[]),
    _bad(PC, "headers", {"X-Count": 3}, "type", "headers.X-Count"),
    _bad(PC, "headers", {f"X-{i}": "v" for i in range(33)}, "maxProperties"),
    _bad(PC, "proxyURL", "https://proxy:3128", "pattern"),
    _bad(PC, "prefix", "team/a", "pattern"),
    _bad(PC, "rateLimit", {"rpm": 0}, "minimum", "rateLimit.rpm"),
    _bad(PC, "rateLimit", {"tpm": 1.5}, "type", "rateLimit.tpm"),
    _bad(PC, "modelsEndpoint", "models", "pattern", provider="openai-compatibility", baseURL="http://x"),
    _bad(PC, "vertex", {"location": "us-east1"}, "required", provider="vertex-api-key"),
    _bad(PC, "vertex", {"project": "My-Project"}, "pattern", "vertex.project", provider="vertex-api-key"),
    _bad(PC, "vertex.location", "US_EAST", "pattern", provider="vertex-api-key", vertex={"project": "my-project"}),
    _bad(PC, "bedrock", {}, "required", provider="bedrock"),
    _bad(PC, "bedrock.region", "US-EAST-1", "pattern", provider="bedrock", bedrock={"region": "us-east-1"}),
    _bad(PC, "apiKey", "sk-inline", "additionalProperties", ""),
    _bad(PR, "gateway", "Default", "pattern"),
    _bad(PR, "gateway", "g" * 41, "maxLength"),
    _bad(PR, "prefix", "-team", "pattern"),
    _bad(PR, "forceModelPrefix", "yes", "type"),
    _bad(PR, "fallbacks", {"m": []}, "minItems", "fallbacks.m"),
    _bad(PR, "fallbacks", {"m": ["a", "b", "c", "d", "e"]}, "maxItems", "fallbacks.m"),
    _bad(PR, "fallbacks", {"m": ["bad\x7f"]}, "pattern", "fallbacks.m.0"),
    _bad(PR, "credentials", [{"name": "a", "weight": -1}], "minimum", "credentials.0.weight"),
    _bad(PR, "credentials", ..., "required", ""),
    _bad(PR, "credentials", [], "minItems"),
    _bad(PR, "credentials", [{"name": f"c{i}"} for i in range(65)], "maxItems"),
    _bad(PR, "credentials.0.name", "OpenRouter", "pattern"),
    _bad(PR, "credentials.0", {"priority": 1}, "required"),
    _bad(PR, "credentials.0.priority", "high", "type"),
    _bad(PR, "models", [{"alias": "x"}], "required", "models.0"),
    _bad(PR, "models", [{"name": ""}], "minLength", "models.0.name"),
    _bad(PR, "models", [{"name": "m", "alias": ""}], "minLength", "models.0.alias"),
    _bad(PR, "models", [{"name": f"m{i}"} for i in range(513)], "maxItems"),
    _bad(PR, "excludedModels", ["*-preview", ""], "minLength", "excludedModels.1"),
    _bad(PR, "excludedModels", ["m"] * 257, "maxItems"),
    _bad(PR, "policy", {"requestRetry": 11}, "maximum", "policy.requestRetry"),
    _bad(PR, "policy", {"requestRetry": -1}, "minimum", "policy.requestRetry"),
    _bad(PR, "policy", {"maxRetryInterval": -1}, "minimum", "policy.maxRetryInterval"),
    _bad(PR, "policy", {"maxRetryCredentials": -1}, "minimum", "policy.maxRetryCredentials"),
    _bad(PR, "policy", {"connectTimeoutSeconds": 0}, "minimum", "policy.connectTimeoutSeconds"),
    _bad(PR, "policy", {"readTimeoutSeconds": 0}, "minimum", "policy.readTimeoutSeconds"),
    _bad(PR, "policy", {"retries": 2}, "additionalProperties"),
    # Control characters (CR/LF smuggle a second request onto a pooled upstream connection; NUL and DEL too).
    _bad(PC, "headers", {"X-Team": "a\r\nX-Evil: 1"}, "pattern", "headers.X-Team"),
    _bad(PC, "headers", {"X-Team": "a\x00b"}, "pattern", "headers.X-Team"),
    _bad(PC, "headers", {"X-Team": "v" * 4097}, "maxLength", "headers.X-Team"),
    _bad(PC, "baseURL", "https://example.com/\x7f", "pattern"),
    _bad(PC, "baseURL", "https://example.com/\x00", "pattern"),
    _bad(
        PC,
        "refreshURL",
        "https://example.com/\r\nHost: evil",
        "pattern",
        provider="kiro",
        apiKeys=[],
        tokenSecretRef={"name": "t", "key": "k"},
    ),
    _bad(PC, "proxyURL", "http://proxy:3128/\x1b", "pattern"),
    _bad(PC, "modelsEndpoint", "/models\r\nX: y", "pattern", provider="openai-compatibility", baseURL="http://x"),
    _bad(PR, "models", [{"name": "gpt-4o\r\nX-Evil: 1"}], "pattern", "models.0.name"),
    _bad(PR, "models", [{"name": "m", "alias": "a\x00"}], "pattern", "models.0.alias"),
    _bad(PR, "excludedModels", ["ok", "bad\x7f"], "pattern", "excludedModels.1"),
]


@pytest.mark.parametrize(("kind", "base", "mutate", "keyword", "where"), SCHEMA_REJECTS)
def test_schema_rejects_invalid_spec(
    kind: str, base: Json, mutate: Callable[[Json], Json], keyword: str, where: str
) -> None:
    assert admit(kind, copy.deepcopy(base))[1] == [], "the base spec must be valid"
    _, errors, _ = admit(kind, mutate(copy.deepcopy(base)))
    found = {(e.validator, ".".join(str(p) for p in e.absolute_path)) for e in errors}
    expected_path = "spec" + (f".{where}" if where else "")
    assert (keyword, expected_path) in found, found


def test_schema_rejects_unknown_top_level_fields_but_status_keeps_them() -> None:
    obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ProviderRoute", "spec": _route(), "extra": 1}
    assert [e.validator for e in schema_errors("ProviderRoute", obj)] == ["additionalProperties"]
    del obj["extra"]
    obj["status"] = {"kopf": {"progress": {}}, "modelCount": 3, "models": ["a", "b", "c"]}
    assert schema_errors("ProviderRoute", obj) == []


# --------------------------------------------------------------------------------------------------------------
# CEL rules

ONE_SOURCE = "exactly one of apiKeys (at least one entry) or tokenSecretRef is required"
TOKEN_ONLY_FOR = "tokenSecretRef is only allowed for providers kiro, cursor, ampcode, minimax, roo and kilo"
NEEDS_TOKEN = "providers kiro, cursor and ampcode authenticate with tokenSecretRef, not apiKeys"
VERTEX_ONLY = "vertex is only allowed for provider vertex-api-key"
AZURE_ONLY = "azure is only allowed for provider azure-openai"
AZURE_WHERE = "provider azure-openai needs azure.resource or baseURL"
IDENTITY_NO_KEYS = "a workload identity (vertex.auth workloadIdentity, azure.entra) takes no apiKeys"
NEEDS_BASE_URL = "baseURL is required for provider openai-compatibility"
ENDPOINT_ONLY = "modelsEndpoint is only allowed for provider openai-compatibility"
BEDROCK_NEEDS = "provider bedrock takes a bedrock block (its region) and no apiKeys or tokenSecretRef"
BEDROCK_ONLY = "bedrock is only allowed for provider bedrock"
UNIQUE_CREDENTIALS = "credential names must be unique"
SELF_FALLBACK = "a model cannot fall back to itself"
ALIAS_SLASH = "models[].alias must not contain '/' when prefix is set (clients call <prefix>/<alias>)"
BUDGET_AMOUNT = "a budget needs tokens, usd or both"
CLIENT_NAME = "a ClientKey's name has at most 63 characters (the proxy knows it as <namespace>.<name>)"
TOKEN = {"name": "session", "key": "token"}

CEL_CASES = [
    # (kind, spec, the failing rules as (path, message); [] = admitted)
    (PC, {"provider": "openrouter"}, [("spec", ONE_SOURCE)]),
    (PC, {"provider": "openrouter", "apiKeys": []}, [("spec", ONE_SOURCE)]),
    (PC, {"provider": "minimax", "apiKeys": [_key()], "tokenSecretRef": TOKEN}, [("spec", ONE_SOURCE)]),
    (PC, {"provider": "minimax", "apiKeys": [], "tokenSecretRef": TOKEN}, []),
    (PC, {"provider": "minimax", "tokenSecretRef": TOKEN}, []),
    (PC, {"provider": "roo", "apiKeys": [_key()]}, []),
    (PC, {"provider": "kilo", "tokenSecretRef": TOKEN}, []),
    (PC, {"provider": "openrouter", "tokenSecretRef": TOKEN}, [("spec", TOKEN_ONLY_FOR)]),
    (PC, {"provider": "claude-api-key", "tokenSecretRef": TOKEN}, [("spec", TOKEN_ONLY_FOR)]),
    (PC, {"provider": "kiro", "tokenSecretRef": TOKEN}, []),
    (PC, {"provider": "cursor", "tokenSecretRef": TOKEN}, []),
    (PC, {"provider": "ampcode", "tokenSecretRef": TOKEN}, []),
    (PC, {"provider": "kiro", "apiKeys": [_key()]}, [("spec", NEEDS_TOKEN)]),
    (PC, {"provider": "ampcode", "apiKeys": [_key()]}, [("spec", NEEDS_TOKEN)]),
    (PC, {"provider": "cursor"}, [("spec", ONE_SOURCE), ("spec", NEEDS_TOKEN)]),
    (
        PC,
        {"provider": "cursor", "apiKeys": [_key()], "tokenSecretRef": TOKEN},
        [("spec", ONE_SOURCE), ("spec", NEEDS_TOKEN)],
    ),
    (PC, {"provider": "vertex-api-key", "apiKeys": [_key()], "vertex": {"project": "my-proj"}}, []),
    (PC, {"provider": "vertex-api-key", "apiKeys": [_key()]}, []),
    (
        PC,
        {"provider": "gemini-api-key", "apiKeys": [_key()], "vertex": {"project": "my-proj"}},
        [("spec", VERTEX_ONLY)],
    ),
    (PC, {"provider": "vertex-api-key", "vertex": {"project": "my-proj", "auth": "workloadIdentity"}}, []),
    (
        PC,
        {"provider": "vertex-api-key", "vertex": {"project": "my-proj", "auth": "serviceAccountKey"}},
        [("spec", ONE_SOURCE)],
    ),
    (
        PC,
        {
            "provider": "vertex-api-key",
            "apiKeys": [_key()],
            "vertex": {"project": "my-proj", "auth": "workloadIdentity"},
        },
        [("spec", IDENTITY_NO_KEYS)],
    ),
    (PC, {"provider": "azure-openai", "apiKeys": [_key()], "azure": {"resource": "contoso"}}, []),
    (PC, {"provider": "azure-openai", "azure": {"resource": "contoso", "entra": {}}}, []),
    (PC, {"provider": "azure-openai", "azure": {"resource": "contoso"}}, [("spec", ONE_SOURCE)]),
    (
        PC,
        {"provider": "azure-openai", "apiKeys": [_key()], "azure": {"resource": "contoso", "entra": {}}},
        [("spec", IDENTITY_NO_KEYS)],
    ),
    (PC, {"provider": "azure-openai", "apiKeys": [_key()]}, [("spec", AZURE_WHERE)]),
    (PC, {"provider": "openrouter", "apiKeys": [_key()], "azure": {"resource": "contoso"}}, [("spec", AZURE_ONLY)]),
    (PC, {"provider": "openai-compatibility", "apiKeys": [_key()]}, [("spec", NEEDS_BASE_URL)]),
    (
        PC,
        {
            "provider": "openai-compatibility",
            "apiKeys": [_key()],
            "baseURL": "http://vllm:8000/v1",
            "modelsEndpoint": "/m",
        },
        [],
    ),
    (PC, {"provider": "groq", "apiKeys": [_key()], "modelsEndpoint": "/models"}, [("spec", ENDPOINT_ONLY)]),
    (PC, {"provider": "groq", "apiKeys": [_key()], "baseURL": "https://proxy.example/v1"}, []),
    (PC, {"provider": "bedrock", "bedrock": {"region": "eu-central-1"}}, []),
    (PC, {"provider": "bedrock"}, [("spec", BEDROCK_NEEDS)]),
    (PC, {"provider": "bedrock", "bedrock": {"region": "us-east-1"}, "apiKeys": [_key()]}, [("spec", BEDROCK_NEEDS)]),
    (
        PC,
        {"provider": "groq", "apiKeys": [_key()], "bedrock": {"region": "us-east-1"}},
        [("spec", BEDROCK_ONLY)],
    ),
    (PR, {"credentials": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}, []),
    (
        PR,
        {"credentials": [{"name": "a"}, {"name": "b", "priority": 1}, {"name": "a", "priority": 2}]},
        [("spec.credentials", UNIQUE_CREDENTIALS)],
    ),
    (PR, _route(prefix="team-a", models=[{"name": "org/model", "alias": "org/m"}]), [("spec", ALIAS_SLASH)]),
    (PR, _route(prefix="team-a", models=[{"name": "org/model", "alias": "m"}, {"name": "org/x"}]), []),
    (PR, _route(models=[{"name": "org/model", "alias": "org/m"}]), []),
    (PR, _route(prefix="team-a"), []),
    (PR, _route(fallbacks={"m": ["n", "o"], "n": ["m"]}), []),
    (PR, _route(fallbacks={"m": ["n", "m"]}), [("spec.fallbacks", SELF_FALLBACK)]),
    ("ClientKey", {"budget": {"per": "day"}}, [("spec.budget", BUDGET_AMOUNT)]),
    ("ClientKey", {"budget": {"usd": 5.5}}, []),
    ("ClientKey", {"budget": {"tokens": 1000, "usd": 5}, "secretRef": {"name": "k", "key": "api-key"}}, []),
]


def _cel_id(index: int, case: tuple[str, Json, list[tuple[str, str]]]) -> str:
    kind, spec, expected = case
    return f"{spec.get('provider', kind)}-{'rejected' if expected else 'admitted'}-{index}"


@pytest.mark.parametrize(("kind", "spec", "expected"), CEL_CASES, ids=[_cel_id(*c) for c in enumerate(CEL_CASES)])
def test_cel_rules(kind: str, spec: Json, expected: list[tuple[str, str]]) -> None:
    _, errors, failures = admit(kind, copy.deepcopy(spec))
    assert [e.message for e in errors] == [], "CEL cases are schema-valid, so only the rules decide"
    assert failures == expected


#: ClientKey names: the longest the proxy's <namespace>.<name> (127) holds beside any namespace (63), and one more.
NAME_CASES = [("a" * 63, []), ("team-a.app_1", []), ("a" * 64, [("", CLIENT_NAME)])]


@pytest.mark.parametrize(("name", "expected"), NAME_CASES, ids=["63", "dots", "64"])
def test_a_client_key_name_fits_the_proxys_client_name(name: str, expected: list[tuple[str, str]]) -> None:
    _, errors, failures = admit("ClientKey", {}, name)
    assert errors == [] and failures == expected


@pytest.mark.parametrize("kind", KINDS_UNDER_TEST)
def test_every_cel_rule_has_a_case_where_it_fails(kind: str) -> None:
    messages = _messages(kind)
    assert messages
    failed = {message for case_kind, _, expected in CEL_CASES if case_kind == kind for _, message in expected}
    failed |= {message for _, expected in NAME_CASES for _, message in expected} if kind == "ClientKey" else set()
    assert failed == set(messages)


def test_cel_rule_locations_and_reasons() -> None:
    spec = _schema("ProviderCredential")["properties"]["spec"]
    by_message = {rule["message"]: rule for rule in spec["x-kubernetes-validations"]}
    assert {m: (r.get("fieldPath"), r.get("reason")) for m, r in by_message.items()} == {
        ONE_SOURCE: (None, None),
        BEDROCK_NEEDS: (".bedrock", "FieldValueRequired"),
        BEDROCK_ONLY: (".bedrock", "FieldValueForbidden"),
        TOKEN_ONLY_FOR: (".tokenSecretRef", "FieldValueForbidden"),
        NEEDS_TOKEN: (".tokenSecretRef", "FieldValueRequired"),
        VERTEX_ONLY: (".vertex", "FieldValueForbidden"),
        AZURE_ONLY: (".azure", "FieldValueForbidden"),
        AZURE_WHERE: (".azure", "FieldValueRequired"),
        IDENTITY_NO_KEYS: (".apiKeys", "FieldValueForbidden"),
        NEEDS_BASE_URL: (".baseURL", "FieldValueRequired"),
        ENDPOINT_ONLY: (".modelsEndpoint", "FieldValueForbidden"),
    }
    route = _schema("ProviderRoute")["properties"]["spec"]
    assert [r["message"] for r in route["properties"]["credentials"]["x-kubernetes-validations"]] == [
        UNIQUE_CREDENTIALS
    ]
    assert [r["message"] for r in route["x-kubernetes-validations"]] == [ALIAS_SLASH]


def test_token_providers_in_the_rules_match_the_catalog() -> None:
    """The providers named in the token rules exist, and kiro/cursor/ampcode are among those allowed a token."""
    rules = _messages("ProviderCredential")
    allowed = set(re.findall(r"'([a-z-]+)'", rules[TOKEN_ONLY_FOR]))
    required = set(re.findall(r"'([a-z-]+)'", rules[NEEDS_TOKEN]))
    assert allowed == {"kiro", "cursor", "ampcode", "minimax", "roo", "kilo"}
    assert required == {"kiro", "cursor", "ampcode"}
    assert required < allowed <= set(KINDS)
    assert {KINDS[name].group for name in allowed} == {"oauth"}


def test_client_key_spec_fields_and_contract() -> None:
    """The fields the issue names, with the proxy's bounds: one schema for the same client-keys contract."""
    props = _schema("ClientKey")["properties"]["spec"]["properties"]
    assert set(props) == {"gateway", "models", "rateLimit", "budget", "expires", "secretRef"}
    routes = _schema("ProviderRoute")["properties"]["spec"]["properties"]
    same = ("type", "default", "maxLength", "pattern")  # a gateway is named the same way by both
    assert [props["gateway"][k] for k in same] == [routes["gateway"][k] for k in same]
    credential = _schema("ProviderCredential")["properties"]["spec"]["properties"]
    for field in ("name", "key"):  # the same references as a credential's, under the same rules
        ours, theirs = props["secretRef"]["properties"][field], credential["tokenSecretRef"]["properties"][field]
        assert {**ours, "description": ""} == {**theirs, "description": ""}
    assert set(props["rateLimit"]["properties"]) == {"rpm", "tpm", "maxParallel"}
    assert set(props["budget"]["properties"]) == {"tokens", "usd", "per"}
    assert (props["budget"]["properties"]["per"]["enum"], props["budget"]["properties"]["per"]["default"]) == (
        ["day", "month"], "month")  # fmt: skip
    assert props["expires"]["format"] == "date-time"
    status = _schema("ClientKey")["properties"]["status"]["properties"]
    assert set(status["usage"]["properties"]) == {"period", "tokens", "spendUSD"}
    assert "key" not in json.dumps(sorted(status)).lower().replace("keysecretname", "")  # never the key itself
