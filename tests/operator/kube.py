"""A Kubernetes API for operator tests: kmock's emulator made to behave like an API server, and helpers.

Two backends serve the same tests through ordinary HTTP and a kubeconfig, so the operator runs unmodified:

* :class:`Emulator`, kmock's in-memory ``KubernetesEmulator`` plus what a real API server does and kmock 0.8 does
  not: server-side metadata (resourceVersion, uid, generation bumped on spec changes, apiVersion/kind,
  generateName), the status subresource split, no-op writes that change nothing, PUT, 409/422 errors, label and
  field selectors, Secret ``stringData``, CRD defaults, and a watch that loses no event between its replay and
  its stream. It relies on private hooks of kmock, hence the ``kmock==0.8.*`` pin.
* :class:`EnvTest`, a real etcd + kube-apiserver on loopback (when ``KUBEBUILDER_ASSETS`` has the binaries),
  behind :class:`RecordingProxy` so that both backends record the requests the operator makes.

:class:`Cluster` is what tests use: an async client, the request log (write counts, watches) and a namespace.
:class:`OperatorRunner` runs ``kopf.operator(clusterwide=True, standalone=True)`` in a thread with its own event
loop, importing the handler module afresh each start, as a new process would.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import copy
import datetime
import functools
import importlib
import inspect
import json
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import kmock._internal.dsl as kmock_dsl
import kmock._internal.rendering as kmock_rendering
import yaml

from . import ssa

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "deploy" / "crds"
GROUP, VERSION = "cliproxy.io", "v1alpha1"
ROUTES = f"{GROUP}/{VERSION}/providerroutes"
CREDENTIALS = f"{GROUP}/{VERSION}/providercredentials"
CLIENTKEYS = f"{GROUP}/{VERSION}/clientkeys"
CONFIGMAPS, SECRETS, EVENTS = "v1/configmaps", "v1/secrets", "v1/events"
TEST_AGENT = "cliproxy-tests"  # the tests' own requests; everything else is the operator's
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


# ---------------------------------------------------------------------------------------------------------------
# Small helpers


async def wait_for(
    predicate: Callable[[], Any],
    within: float = 10.0,
    *,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition not reached",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy, and return that."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (within {within} s)")
        await asyncio.sleep(interval)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(data: Mapping[str, str] | None) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (data or {}).items()}


def resource_path(resource: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    """``'v1/configmaps'`` or ``'cliproxy.io/v1alpha1/providerroutes'`` → its REST path."""
    parts = resource.split("/")
    prefix = f"/api/{parts[0]}" if len(parts) == 2 else f"/apis/{parts[0]}/{parts[1]}"
    path = prefix + (f"/namespaces/{namespace}" if namespace else "") + f"/{parts[-1]}"
    return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def parse_path(path: str) -> tuple[str | None, str | None, str | None, str | None]:
    """A REST path → (resource, namespace, name, subresource); resource is None for non-resource paths."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group_version, rest = parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        return None, None, None, None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    plural, name = rest[0], (rest[1] if len(rest) > 1 else None)
    return f"{group_version}/{plural}", namespace, name, "/".join(rest[2:]) or None


@dataclass(frozen=True)
class Recorded:
    """One request the API saw, reduced to what the tests ask about."""

    method: str
    path: str
    resource: str | None
    namespace: str | None
    name: str | None  # from the body for a POST (create)
    subresource: str | None
    watch: bool
    agent: str
    selector: str | None = None  # the fieldSelector of a list or watch

    @classmethod
    def of(cls, method: str, path: str, params: Mapping[str, str], agent: str, data: Any) -> Recorded:
        resource, namespace, name, sub = parse_path(path)
        if method == "POST" and name is None and isinstance(data, dict):
            meta = data.get("metadata") or {}
            name = meta.get("name") or meta.get("generateName")
            namespace = namespace or meta.get("namespace")
        watch = params.get("watch") in ("true", "1")
        return cls(method, path, resource, namespace, name, sub, watch, agent, params.get("fieldSelector"))

    @property
    def by_operator(self) -> bool:
        return self.agent != TEST_AGENT

    @property
    def write(self) -> bool:
        return self.method in WRITE_METHODS


def matching(
    log: Iterable[Recorded],
    resource: str | None = None,
    namespace: str | None = None,
    name: str | None = None,
    *,
    writes: bool = False,
    operator_only: bool = True,
) -> list[Recorded]:
    return [
        r
        for r in log
        if (not operator_only or r.by_operator)
        and (not writes or r.write)
        and (resource is None or r.resource == resource)
        and (namespace is None or r.namespace == namespace)
        and (name is None or r.name == name)
    ]


def write_kubeconfig(
    path: str | os.PathLike[str], server: str, token: str = "test-token", *, insecure: bool = False
) -> None:
    cluster: dict[str, Any] = {"server": server}
    if insecure:
        cluster["insecure-skip-tls-verify"] = True
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "test",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "test", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "default"}}],
    }
    Path(path).write_text(json.dumps(document))


def load_crds(directory: Path = CRD_DIR) -> list[dict[str, Any]]:
    """The project's CRD documents (any YAML in deploy/crds/ whose kind is CustomResourceDefinition)."""
    documents = []
    for file in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        for document in yaml.safe_load_all(file.read_text()):
            if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                documents.append(document)
    return documents


# ---------------------------------------------------------------------------------------------------------------
# The emulator


class _Invalid(Exception):
    pass


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (``None`` deletes), returning new containers only."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _selector_terms(selector: str) -> list[tuple[str, str, Any]]:
    """Label selector → (key, op, value) terms: =, ==, !=, in, notin, exists, !exists."""
    terms: list[tuple[str, str, Any]] = []
    for part in re.split(r",(?![^()]*\))", selector or ""):
        part = part.strip()
        if not part:
            continue
        if m := re.fullmatch(r"([^\s!=()]+)\s+(in|notin)\s*\(([^)]*)\)", part):
            terms.append((m[1], m[2], {v.strip() for v in m[3].split(",") if v.strip()}))
        elif m := re.fullmatch(r"([^\s!=]+)\s*(==|=|!=)\s*(\S*)", part):
            terms.append((m[1], "!=" if m[2] == "!=" else "=", m[3]))
        elif part.startswith("!"):
            terms.append((part[1:].strip(), "!exists", None))
        else:
            terms.append((part, "exists", None))
    return terms


def labels_match(labels: Mapping[str, str], selector: str) -> bool:
    for key, op, value in _selector_terms(selector):
        present, actual = key in labels, labels.get(key)
        if op == "=":
            ok = present and actual == value
        elif op == "!=":
            ok = actual != value
        elif op == "in":
            ok = present and actual in value
        elif op == "notin":
            ok = not present or actual not in value
        else:
            ok = present == (op == "exists")
        if not ok:
            return False
    return True


def fields_match(obj: Mapping[str, Any], selector: str) -> bool:
    for part in (selector or "").split(","):
        if not part.strip():
            continue
        m = re.fullmatch(r"\s*([^!=]+?)\s*(==|=|!=)\s*(.*?)\s*", part)
        if m is None:
            raise _Invalid(f"invalid field selector {part!r}")
        value: Any = obj
        for key in m[1].split("."):
            value = value.get(key) if isinstance(value, Mapping) else None
        actual = "" if value is None else str(value)
        if (actual == m[3]) != (m[2] != "!="):
            return False
    return True


def apply_defaults(schema: Mapping[str, Any] | None, value: Any) -> Any:
    """Structural-schema defaulting, as the API server does for CRDs (objects and arrays, recursively)."""
    if not schema:
        return value
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
        if isinstance(schema.get("additionalProperties"), dict):
            for key in value:
                value[key] = apply_defaults(schema["additionalProperties"], value[key])
    elif isinstance(value, list) and schema.get("items"):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def _prune(schema: Mapping[str, Any] | None, value: Any, *, root: bool = False) -> Any:
    """Structural pruning: unknown fields dropped (unless preserved), nulls of non-nullable fields dropped."""
    if not schema:
        return value
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields") or isinstance(extra, dict)
        for key in list(value):
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if root and key in ("apiVersion", "kind", "metadata"):
                continue
            unknown = sub is None and not keep_unknown
            if unknown or (value[key] is None and sub is not None and not sub.get("nullable")):
                del value[key]
            elif sub is not None:
                value[key] = _prune(sub, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_prune(schema["items"], item) for item in value]
    return value


def _json_schema(node: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAPI v3 (Kubernetes flavour) → JSON Schema, for validating an already pruned object."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "description", "format", "example", "default"):
            continue
        if key == "properties":
            out[key] = {name: _json_schema(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_json_schema(part) for part in value]
        else:
            out[key] = copy.deepcopy(value)
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def _cel_program(rule: str) -> Any:
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel_failures(node: Mapping[str, Any], value: Any, path: str = "") -> list[str]:
    """Messages of the ``x-kubernetes-validations`` rules that fail where their value is present."""
    import celpy

    failures = []
    for rule in node.get("x-kubernetes-validations") or []:
        if "oldSelf" in rule["rule"]:
            continue  # transition rules are not evaluated
        try:
            ok = bool(_cel_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)}))
        except Exception as error:  # an evaluation error rejects, as on the API server
            ok, rule = False, {**rule, "message": f"{rule.get('message')} ({error})"}
        if not ok:
            failures.append(f"{path or '<root>'}: {rule.get('message') or rule['rule']}")
    if isinstance(value, dict):
        for name, child in (node.get("properties") or {}).items():
            if name in value:
                failures += _cel_failures(child, value[name], f"{path}.{name}" if path else name)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            failures += _cel_failures(node["items"], item, f"{path}[{index}]")
    return failures


def admit(schema: Mapping[str, Any] | None, obj: dict[str, Any]) -> dict[str, Any]:
    """Default, prune and validate a custom object (schema and CEL) as the API server does; raise on failure."""
    if not schema:
        return obj
    for part in ("spec", "status"):
        if isinstance(obj.get(part), dict):
            obj[part] = apply_defaults((schema.get("properties") or {}).get(part), obj[part])
    obj = _prune(schema, obj, root=True)
    validator = _validators.get(id(schema))
    if validator is None:
        import jsonschema

        validator = _validators[id(schema)] = jsonschema.Draft7Validator(_json_schema(schema))
    problems = [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors({k: v for k, v in obj.items() if k != "metadata"})
    ]
    problems = problems or _cel_checked(schema, obj)
    if problems:
        raise _Invalid("; ".join(problems))
    return obj


_validators: dict[int, Any] = {}
_cel_verdicts: dict[tuple[int, str, str], list[str]] = {}  # (schema node, field, value as JSON) -> failures


def _cel_checked(schema: Mapping[str, Any], obj: Mapping[str, Any]) -> list[str]:
    """The CEL failures of an object, each top-level field's remembered by value: interpreted CEL is slow, and a
    status write leaves the spec (where the rules are) as it was. Root rules see only ``metadata.name`` and
    ``metadata.generateName`` of the metadata, as on the API server."""
    content = {k: v for k, v in obj.items() if k != "metadata"}
    meta = obj.get("metadata") or {}
    root = {**content, "metadata": {k: meta[k] for k in ("name", "generateName") if k in meta}}
    failures = _cel_failures({"x-kubernetes-validations": schema.get("x-kubernetes-validations")}, root)
    for name, node in (schema.get("properties") or {}).items():
        if name in content:
            key = (id(node), name, json.dumps(content[name], sort_keys=True))
            if key not in _cel_verdicts:
                if len(_cel_verdicts) > 10_000:
                    _cel_verdicts.clear()
                _cel_verdicts[key] = _cel_failures(node, content[name], name)
            failures += _cel_verdicts[key]
    return failures


NAMESPACES = "v1/namespaces"
NAMESPACE_RESOURCE = kmock.resource(NAMESPACES)
REVOKED = "cliproxy-tests/revoked"  # a bus event that ends the watches of a revoked token, sent to no client
TERMINATION_SECONDS = 0.5  # how long a deleted namespace stays Terminating before its objects go


def _parse_namespaces(original: Callable[[str], Any]) -> Callable[[str], Any]:
    """kmock 0.8 reads ``/api/v1/namespaces[/name]`` as a namespace prefix and fails; read it as the resource."""
    from kmock._internal import parsing

    def parse_path(path: str) -> Any:
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and (len(parts) <= 4 or parts[4:] in (["status"], ["finalize"])):
            name, sub = (parts[3:4] or [None])[0], (parts[4:5] or [None])[0]
            return parsing.ParsedPath("", "v1", "namespaces", None, name, sub)
        return original(path)

    return parse_path


def _serve_namespaces() -> None:
    from kmock._internal import parsing

    if not getattr(parsing.parse_path, "serves_namespaces", False):
        parsing.parse_path = _parse_namespaces(parsing.parse_path)
        parsing.parse_path.serves_namespaces = True  # type: ignore[attr-defined]


_serve_namespaces()


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """``KubernetesEmulator`` + the server-side behaviour of a real API server that kopf and clients rely on."""

    _last_rv: int = attrs.field(default=0, init=False)
    _schemas: dict[Any, Any] = attrs.field(factory=dict, init=False)  # CRD resource -> openAPIV3Schema
    _terminations: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)
    _revoked: set[str] = attrs.field(factory=set, init=False)  # bearer tokens answered 401
    _confined: dict[str, str] = attrs.field(factory=dict, init=False)  # bearer token -> the one namespace it may use
    _builtin: int = attrs.field(default=0, init=False)  # reactions the emulator itself added
    _direct: dict[Any, Callable[[kmock.Request], Any]] = attrs.field(factory=dict, init=False)
    _order: tuple[tuple[int, ...], list[Any]] = attrs.field(default=((), []), init=False)  # reactions by priority
    refused: list[tuple[str | None, str]] = attrs.field(factory=list, init=False)  # writes refused: (namespace, agent)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[kmock.method.PUT] << self._serve_stored  # kmock routes no PUT at all
        for action in (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE):
            self.fallback[action] ** 1 << self._serve_stored  # before kmock's own, which scans every object
        self._builtin = len(self._payloads)
        self._direct = {
            kmock.action.LIST: self._serve_list, kmock.action.FETCH: self._serve_fetch,
            kmock.action.CREATE: self._serve_stored, kmock.action.UPDATE: self._serve_stored,
            kmock.action.DELETE: self._serve_stored, kmock.method.PUT: self._serve_stored,
        }  # fmt: skip

    # --- bookkeeping -------------------------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._last_rv += 1
        return str(self._last_rv)

    def register_crd(self, crd: Mapping[str, Any]) -> list[str]:
        """Serve a CRD's resources (discovery, status subresource, schema defaults), as the API server would."""
        spec = crd["spec"]
        names, registered = spec["names"], []
        for version in spec["versions"]:
            key = f"{spec['group']}/{version['name']}/{names['plural']}"
            self.resources[key] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular"),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                shortnames=set(names.get("shortNames") or ()),
                categories=set(names.get("categories") or ()),
                subresources=set(version.get("subresources") or ()),
                verbs={"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"},
            )
            self._schemas[kmock.resource(key)] = (version.get("schema") or {}).get("openAPIV3Schema")
            registered.append(key)
        return registered

    def _info(self, resource: Any) -> Any:
        return self.resources.get(resource)

    def _has_status(self, resource: Any) -> bool:
        info = self._info(resource)
        return bool(info is not None and "status" in info.subresources)

    def _is_custom(self, resource: Any) -> bool:
        return resource in self._schemas

    def _lookup(self, key: Any) -> Any:
        try:
            obj = self._objects[key]
        except KeyError:
            return None
        return None if obj.deleted else obj

    async def _emit(self, resource: Any, kind: str, raw: dict[str, Any]) -> None:
        await self._buses[resource].put({"type": kind, "object": raw})

    def _normalise(self, resource: Any, body: dict[str, Any]) -> None:
        """What the server does to every object it stores: Secret stringData folded into data."""
        if resource.group == "" and resource.plural == "secrets":
            string_data = body.pop("stringData", None) or {}
            if string_data:
                body["data"] = {**(body.get("data") or {}), **{k: b64(v) for k, v in string_data.items()}}

    # --- request handling --------------------------------------------------------------------------------------

    async def revoke(self, token: str) -> None:
        """Refuse this bearer token from now on (401), and end its open watches, as for a deleted ServiceAccount."""
        self._revoked.add(token)
        for bus in list(self._buses.values()):
            await bus.put({"type": REVOKED})

    def confine(self, token: str, namespace: str) -> None:
        """Grant this bearer token one namespace only, as a Role does: anything else is 403 Forbidden."""
        self._confined[token] = namespace

    @staticmethod
    def _token(request: kmock.Request) -> str:
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        return token if scheme.lower() == "bearer" else ""

    def _token_revoked(self, request: kmock.Request) -> bool:
        return self._token(request) in self._revoked

    def _authorise(self, request: kmock.Request) -> None:
        if self._token_revoked(request):
            raise kmock.KubernetesError(status=401, reason="Unauthorized", message="Unauthorized")
        allowed = self._confined.get(self._token(request))
        resource = request.resource
        if allowed is not None and resource is not None and resource.plural and request.namespace != allowed:
            message = f"{resource.plural} is forbidden: the token may use namespace {allowed!r} only"
            raise kmock.KubernetesError(status=403, reason="Forbidden", message=message)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if self._revoked or self._confined:
            self._authorise(request)
        is_write = request.resource is not None and (
            request.action in (kmock.action.CREATE, kmock.action.DELETE, kmock.action.UPDATE)
            or (request.method == kmock.method.PUT and request.name is not None)
        )
        if not is_write:
            return await self._dispatch(request)
        async with self._lock:
            try:
                release = await self._write(request)
            except kmock.KubernetesError:
                self.refused.append((request.namespace, dict(request.headers).get("User-Agent", "")))
                raise
        try:
            return await self._dispatch(request)
        finally:
            if release is not None:  # finalizers gone from a deleted object: it goes away after the response
                async with self._lock:
                    raw = copy.deepcopy(self._objects[release].raw)
                    raw["metadata"]["resourceVersion"] = self._next_rv()
                    self._objects[release].delete()
                    await self._emit(release[0], "DELETED", raw)

    async def _dispatch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """kmock's ``RawHandler._handle`` with a constant-time test of whether a reaction sees the request.

        kmock asks ``request in reaction._source``, which replays every request served so far through the
        reaction's filters: quadratic in the requests, minutes at 2,000 routes. A reaction behind plain filters
        and priorities sees the request exactly when each filter's criteria accept it; any other view (slices,
        unions, exclusions) is still asked kmock's way.
        """
        if (resource := request.resource) is not None and resource.plural and len(self._payloads) == self._builtin:
            serve = self._direct.get(kmock.method.PUT if request.method == kmock.method.PUT else request.action)
            if serve is not None:  # no reaction added by a test: answer straight away, in one write
                return aiohttp.web.json_response(await serve(request))
        if self._order[0] != (key := tuple(map(id, self._payloads))):
            depth = max((len(p.priorities) for p in self._payloads), default=0)
            pad = lambda p: tuple(-x for x in p.priorities) + (0,) * (depth - len(p.priorities))  # noqa: E731
            self._order = (key, sorted(self._payloads, key=pad))
        for payload in self._order[1]:
            if not payload._disabled.is_set() and self._sees(payload._source, request):
                try:
                    return await payload(request)
                except kmock_rendering.ReactionMismatchError:  # either mismatch or depletion
                    payload._disabled.set()
                except NotImplementedError:  # matched, but nothing to respond with
                    pass
        raise NotImplementedError("no reaction matches the request")

    def _sees(self, view: Any, request: kmock.Request) -> bool:
        node = view
        while node is not self:
            if type(node) is kmock_dsl.Filter:
                if not node.criteria(request):
                    return False
            elif type(node) is not kmock_dsl.Priority:
                return request in view
            node = node._source
        return True

    async def _write(self, request: kmock.Request) -> Any:
        try:
            if request.action == kmock.action.CREATE:
                await self._create(request)
                return None
            if request.action == kmock.action.DELETE:
                return await self._delete(request)
            return await self._update(request)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, _Invalid) as error:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(error)) from error

    async def _create(self, request: kmock.Request) -> None:
        resource, body = request.resource, request.data
        if request.subresource is not None:
            raise kmock.KubernetesError(status=405, reason="MethodNotAllowed", message="create on a subresource")
        if not isinstance(body, dict):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="the body must be an object")
        info = self._info(resource)
        meta = body.setdefault("metadata", {})
        if self._terminating(request.namespace or meta.get("namespace")):
            message = f"unable to create new content in namespace {request.namespace} because it is being terminated"
            raise kmock.KubernetesError(status=403, reason="Forbidden", message=message)
        if self._deleted_namespace(request.namespace or meta.get("namespace")):
            name = request.namespace or meta.get("namespace")
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f"namespaces {name!r} not found",
                                        details={"name": name, "kind": "namespaces"})  # fmt: skip
        if request.namespace:
            if meta.get("namespace", request.namespace) != request.namespace:
                raise kmock.KubernetesError(status=400, reason="BadRequest", message="namespace does not match")
            meta["namespace"] = request.namespace
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise _Invalid("metadata.name: Required value")
        body.setdefault("apiVersion", f"{resource.group}/{resource.version}" if resource.group else resource.version)
        if info is not None and info.kind:
            body.setdefault("kind", info.kind)
        if self._has_status(resource):
            body.pop("status", None)  # the main endpoint does not take status when a status subresource exists
        if self._is_custom(resource):
            body = admit(self._schemas[resource], body)
            if manager := request.params.get("fieldManager"):
                ssa.record_update(self._schemas[resource], None, body, manager)
        self._normalise(resource, body)
        meta = body["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self._is_custom(resource) or "spec" in body:
            meta["generation"] = 1
        meta["resourceVersion"] = self._next_rv()
        key = (resource, meta.get("namespace"), meta["name"])
        if self._lookup(key) is not None:
            raise kmock.KubernetesError(status=409, reason="AlreadyExists", message=f"{meta['name']!r} already exists")
        if key in self._objects:
            self._objects[key].create(body)
        else:
            self._objects[key] = body
        await self._emit(resource, "ADDED", copy.deepcopy(self._objects[key].raw))

    async def _delete(self, request: kmock.Request) -> Any:
        key = (request.resource, request.namespace, request.name)
        obj = self._lookup(key)
        if obj is None:
            raise kmock.KubernetesObjectNotFoundError(reason="NotFound", message=f"{request.name!r} not found")
        current = copy.deepcopy(obj.raw)
        meta = current.setdefault("metadata", {})
        if meta.get("deletionTimestamp"):
            return None
        if (request.resource.group, request.resource.plural) == ("", "namespaces"):
            return await self._terminate(request.resource, obj, current, request.name)
        if meta.get("finalizers"):
            meta["deletionTimestamp"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            meta["deletionGracePeriodSeconds"] = 0
            meta["resourceVersion"] = self._next_rv()
            obj.history.append(current)
            await self._emit(request.resource, "MODIFIED", copy.deepcopy(current))
            return None
        meta["resourceVersion"] = self._next_rv()
        obj.history.append(current)
        obj.delete()
        await self._emit(request.resource, "DELETED", current)
        return None

    async def _terminate(self, resource: Any, obj: Any, current: dict[str, Any], namespace: str) -> None:
        """A namespace is Terminating, then (as the namespace controller does) its objects go, then it goes."""
        meta = current["metadata"]
        meta["deletionTimestamp"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        current["status"] = {"phase": "Terminating"}
        meta["resourceVersion"] = self._next_rv()
        obj.history.append(current)
        await self._emit(resource, "MODIFIED", copy.deepcopy(current))

        async def finish() -> None:
            await asyncio.sleep(TERMINATION_SECONDS)
            async with self._lock:
                for (kind, ns, _), item in list(self._objects.items()):
                    if ns == namespace and not item.deleted:
                        raw = copy.deepcopy(item.raw)
                        raw["metadata"]["resourceVersion"] = self._next_rv()
                        item.delete()
                        await self._emit(kind, "DELETED", raw)
                gone = copy.deepcopy(obj.raw)
                gone["metadata"]["resourceVersion"] = self._next_rv()
                obj.delete()
                await self._emit(resource, "DELETED", gone)

        self._terminations.add(task := asyncio.get_running_loop().create_task(finish()))
        task.add_done_callback(self._terminations.discard)

    def _deleted_namespace(self, namespace: str | None) -> bool:
        """A namespace that existed and was deleted (one never created here is taken as there: tests skip them)."""
        if not namespace:
            return False
        try:
            return bool(self._objects[(NAMESPACE_RESOURCE, None, namespace)].deleted)
        except KeyError:
            return False

    def _terminating(self, namespace: str | None) -> bool:
        obj = self._lookup((NAMESPACE_RESOURCE, None, namespace)) if namespace else None
        return obj is not None and bool(obj.raw.get("metadata", {}).get("deletionTimestamp"))

    async def _update(self, request: kmock.Request) -> Any:
        resource = request.resource
        key = (resource, request.namespace, request.name)
        obj = self._lookup(key)
        if obj is None:
            raise kmock.KubernetesObjectNotFoundError(reason="NotFound", message=f"{request.name!r} not found")
        if request.subresource not in (None, "status"):
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f"no subresource {request.subresource}")
        current = copy.deepcopy(obj.raw)
        body = request.data
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        status_only = request.subresource == "status"
        has_status = self._has_status(resource)
        if status_only and not has_status:
            raise kmock.KubernetesError(status=404, reason="NotFound", message="no status subresource")

        if request.method == kmock.method.PUT:
            if not isinstance(body, dict):
                raise kmock.KubernetesError(status=400, reason="BadRequest", message="the body must be an object")
            self._check_rv(body, current)
            if self._is_custom(resource) and not (body.get("metadata") or {}).get("resourceVersion"):
                raise _Invalid("metadata.resourceVersion: Invalid value: 0: must be specified for an update")
            new = copy.deepcopy(body)
        elif content_type == "application/json-patch+json" or isinstance(body, list):
            if not isinstance(body, list):
                raise kmock.KubernetesError(
                    status=400, reason="BadRequest", message="a JSON patch (application/json-patch+json) must be a list"
                )
            ops = [op for op in body if self._op_allowed(op.get("path", ""), status_only, has_status)]
            new = jsonpatch.apply_patch(current, ops, in_place=False)
        elif content_type == "application/apply-patch+yaml":
            new = self._apply(request, current, status_only)
        else:
            if content_type == "application/strategic-merge-patch+json" and self._is_custom(resource):
                message = "strategic merge patch is not supported for custom resources"
                raise kmock.KubernetesError(status=415, reason="UnsupportedMediaType", message=message)
            if not isinstance(body, dict):
                raise kmock.KubernetesError(status=400, reason="BadRequest", message="a merge patch must be an object")
            self._check_rv(body, current)
            new = merge_patch(current, body)

        # What the client may not change, and what this endpoint ignores.
        meta, old_meta = new.setdefault("metadata", {}), current["metadata"]
        for fixed in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp"):
            if fixed in old_meta:
                meta[fixed] = old_meta[fixed]
            else:
                meta.pop(fixed, None)
        new["apiVersion"], new["kind"] = current.get("apiVersion"), current.get("kind")
        if status_only:  # /status takes the status only
            patched, new = new, copy.deepcopy(current)
            new.pop("status", None)
            if patched.get("status") is not None:
                new["status"] = patched["status"]
        elif has_status:  # and the main endpoint everything but the status
            new.pop("status", None)
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
        if self._is_custom(resource):
            new = admit(self._schemas[resource], new)
            manager = request.params.get("fieldManager")
            if manager and not status_only and content_type != "application/apply-patch+yaml":
                ssa.record_update(self._schemas[resource], current, new, manager)
        self._normalise(resource, new)
        meta = new["metadata"]
        meta["resourceVersion"] = old_meta.get("resourceVersion")
        if new == current:
            return None  # a no-op write stores nothing, bumps nothing and notifies nobody
        if "generation" in old_meta and new.get("spec") != current.get("spec"):
            meta["generation"] = int(old_meta["generation"]) + 1
        meta["resourceVersion"] = self._next_rv()
        obj.history.append(new)
        await self._emit(resource, "MODIFIED", copy.deepcopy(new))
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return key
        return None

    def _apply(self, request: kmock.Request, current: dict[str, Any], status_only: bool) -> dict[str, Any]:
        """Server-side apply (``tests/operator/ssa.py``), for custom resources' spec and metadata."""
        manager = request.params.get("fieldManager")
        if not manager:
            raise _Invalid("fieldManager: Required value: is required for apply patch")
        if not self._is_custom(request.resource) or status_only:
            raise kmock.KubernetesError(status=415, reason="UnsupportedMediaType", message="apply is not emulated")
        applied = request.data if isinstance(request.data, dict) else yaml.safe_load(request.text or "")
        if not isinstance(applied, dict):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="an apply body must be an object")
        self._check_rv(applied, current)
        try:
            return ssa.apply(self._schemas[request.resource], current, applied, manager,
                             request.params.get("force") == "true")  # fmt: skip
        except ssa.Conflict as conflict:
            raise kmock.KubernetesError(status=409, reason="Conflict", message=str(conflict)) from conflict

    @staticmethod
    def _check_rv(body: Mapping[str, Any], current: Mapping[str, Any]) -> None:
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"].get("resourceVersion"):
            message = "the object has been modified; please apply your changes to the latest version"
            raise kmock.KubernetesError(status=409, reason="Conflict", message=message)

    @staticmethod
    def _op_allowed(path: str, status_only: bool, has_status: bool) -> bool:
        is_status = path == "/status" or path.startswith("/status/")
        if status_only:
            return is_status or path.startswith("/metadata/resourceVersion")
        return not (has_status and is_status)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, jsonpatch.JsonPatchTestFailed):  # a failed `test` op: 422, as kopf expects
            exc = kmock.KubernetesError(status=422, reason="Invalid", message=str(exc))
        return await super()._render_error(exc)

    # --- reading -----------------------------------------------------------------------------------------------

    def _visible(self, request: kmock.Request, resource: Any, namespace: str | None, name: str, raw: Any) -> bool:
        if resource != request.resource:
            return False
        if request.namespace is not None and namespace != request.namespace:
            return False
        if request.name is not None and name != request.name:
            return False
        params = request.params
        if not labels_match((raw.get("metadata") or {}).get("labels") or {}, params.get("labelSelector", "")):
            return False
        return fields_match(raw, params.get("fieldSelector", ""))

    def _known(self, resource: Any) -> bool:
        return any(r == resource for r in self._get_resources())

    async def _serve_list(self, request: kmock.Request) -> Any:
        if not self._known(request.resource):
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            items = [
                copy.deepcopy(obj.raw)
                for (resource, namespace, name), obj in self._objects.items()
                if not obj.deleted and self._visible(request, resource, namespace, name, obj.raw)
            ]
            rv = str(self._last_rv)
        info = self._info(request.resource)
        res = request.resource
        return {
            "apiVersion": f"{res.group}/{res.version}" if res.group else res.version,
            "kind": f"{info.kind}List" if info is not None and info.kind else "List",
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        yield b""  # send the headers now: the client waits for them
        bus = self._buses[request.resource]
        # Take the snapshot and the bus position under one lock: no event falls between replay and stream.
        # A watch from a resourceVersion (kopf's and the proxy's, after their list) starts after it: only what
        # changed since then is sent (replaying everything made each restart handle every object twice).
        since = _version_number(request.params.get("resourceVersion"))
        async with self._lock:
            mark = await bus.mark()
            events = [
                {"type": "ADDED", "object": copy.deepcopy(obj.raw)}
                for (resource, namespace, name), obj in self._objects.items()
                if not obj.deleted
                and self._visible(request, resource, namespace, name, obj.raw)
                and _version_number((obj.raw.get("metadata") or {}).get("resourceVersion"), -1) > since
            ]
        try:
            for event in events:
                yield event
            async for event in bus.stream(since=mark):
                if event["type"] == REVOKED:
                    if self._token_revoked(request):
                        return
                    continue
                obj = event.get("object") or {}
                meta = obj.get("metadata") or {}
                if self._visible(request, request.resource, meta.get("namespace"), meta.get("name"), obj):
                    yield event
        finally:
            with contextlib.suppress(ValueError, RuntimeError):
                await bus.unmark(mark)

    async def _serve_stored(self, request: kmock.Request) -> Any:
        """The object a write left (its last state when the write deleted it), by key: kmock scans them all."""
        namespace, name = request.namespace, request.name
        if request.action == kmock.action.CREATE:
            meta = request.data.get("metadata") or {}
            namespace, name = namespace or meta.get("namespace"), meta.get("name")
        obj = self._objects[(request.resource, namespace, name)]
        return obj.last.raw

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        obj = self._lookup((request.resource, request.namespace, request.name))
        if obj is None:
            raise kmock.KubernetesObjectNotFoundError()
        return obj.raw


def _version_number(version: Any, absent: int = 0) -> int:
    """A resourceVersion as the emulator numbers them; ``absent`` for none (or one it did not give)."""
    try:
        return int(version)
    except (TypeError, ValueError):
        return absent


def setup_emulator(emulator: Emulator, crds: list[dict[str, Any]] | None = None) -> list[str]:
    """Load kmock's bundled built-in resources and serve the project's CRDs."""
    with warnings.catch_warnings():  # kmock 0.8 reads its bundle with a deprecated importlib call
        warnings.simplefilter("ignore", DeprecationWarning)
        emulator.resources.load_bundled()  # v1/namespaces (kopf needs it), configmaps, secrets, events, ...
    documents = load_crds() if crds is None else crds
    if not documents:
        raise RuntimeError(f"no CustomResourceDefinition in {CRD_DIR}")
    registered = []
    for crd in documents:
        registered += emulator.register_crd(crd)
    return registered


# ---------------------------------------------------------------------------------------------------------------
# The client side: what tests use, for either backend


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


@dataclass
class Cluster:
    """A Kubernetes API for one test: an async client, the request log and a namespace of the test's own."""

    kind: str  # "emulator" | "envtest"
    url: str  # what kopf and the kubernetes client connect to (the kubeconfig's server)
    namespace: str
    log: Callable[[], list[Recorded]]
    token: str = "test-token"
    emulator: Emulator | None = None
    session: aiohttp.ClientSession | None = field(default=None, repr=False)

    async def __aenter__(self) -> Cluster:
        self.session = aiohttp.ClientSession(
            base_url=self.url,
            headers={"User-Agent": TEST_AGENT, "Authorization": f"Bearer {self.token}"},
            timeout=aiohttp.ClientTimeout(total=30),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def request(
        self, method: str, path: str, *, json_body: Any = None, params: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> Any:  # fmt: skip
        assert self.session is not None, "use the cluster as an async context manager"
        headers = {"Content-Type": content_type} if content_type else {}
        data = None if json_body is None else json.dumps(json_body)
        if data is not None and not content_type:
            headers["Content-Type"] = "application/json"
        async with self.session.request(method, path, data=data, params=params, headers=headers) as response:
            text = await response.text()
            try:
                body = json.loads(text) if text else None
            except ValueError:
                body = text
            if response.status >= 400:
                raise ApiError(response.status, body)
            return body

    # --- objects -----------------------------------------------------------------------------------------------

    async def create(self, resource: str, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        ns = namespace or self.namespace
        body = {**body, "metadata": {**body.get("metadata", {}), "namespace": ns}}
        return await self.request("POST", resource_path(resource, ns), json_body=body)

    async def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return await self.request("GET", resource_path(resource, namespace or self.namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def list_objects(self, resource: str, namespace: str | None = None, **params: str) -> list[dict[str, Any]]:
        result = await self.request("GET", resource_path(resource, namespace or self.namespace), params=params)
        return list(result.get("items") or [])

    async def patch(
        self, resource: str, name: str, body: Any, namespace: str | None = None, *, subresource: str | None = None
    ) -> dict[str, Any]:
        content_type = "application/json-patch+json" if isinstance(body, list) else "application/merge-patch+json"
        path = resource_path(resource, namespace or self.namespace, name, subresource)
        return await self.request("PATCH", path, json_body=body, content_type=content_type)

    async def replace(self, resource: str, name: str, body: dict[str, Any], namespace: str | None = None) -> Any:
        return await self.request("PUT", resource_path(resource, namespace or self.namespace, name), json_body=body)

    async def delete(self, resource: str, name: str, namespace: str | None = None) -> None:
        with contextlib.suppress(ApiError):
            await self.request("DELETE", resource_path(resource, namespace or self.namespace, name))

    async def events(self, name: str | None = None, namespace: str | None = None) -> list[dict[str, Any]]:
        """Core v1 Events in the namespace, optionally only those about the named object."""
        events = await self.list_objects(EVENTS, namespace)
        return [e for e in events if name is None or (e.get("involvedObject") or {}).get("name") == name]

    async def ensure_namespace(self, name: str) -> None:
        if self.kind == "emulator":
            return  # kmock cannot route /api/v1/namespaces; namespaces need not exist there
        with contextlib.suppress(ApiError):
            await self.request("POST", "/api/v1/namespaces", json_body={"metadata": {"name": name}})

    async def purge_namespace(self, namespace: str | None = None) -> None:
        """Remove the test's objects, finalizers included (a real server keeps them otherwise)."""
        ns = namespace or self.namespace
        for resource in (ROUTES, CREDENTIALS, CONFIGMAPS, SECRETS):
            with contextlib.suppress(ApiError):
                for item in await self.list_objects(resource, ns):
                    name = item["metadata"]["name"]
                    if item["metadata"].get("finalizers"):
                        with contextlib.suppress(ApiError):
                            await self.patch(resource, name, {"metadata": {"finalizers": None}}, ns)
                    await self.delete(resource, name, ns)

    # --- the request log ---------------------------------------------------------------------------------------

    def mark(self) -> int:
        return len(self.log())

    def requests(self, resource: str | None = None, name: str | None = None, *, since: int = 0,
                 writes: bool = False, namespace: str | None = None) -> list[Recorded]:  # fmt: skip
        """The operator's requests (not the tests'), filtered; in this test's namespace unless told otherwise."""
        ns = namespace or self.namespace
        return matching(self.log()[since:], resource, ns, name, writes=writes)

    def writes(self, resource: str, name: str | None = None, *, since: int = 0) -> int:
        """How many POST/PUT/PATCH/DELETE requests the operator sent for the resource (and name)."""
        return len(self.requests(resource, name, since=since, writes=True))

    def write_counts(self, *, since: int = 0) -> collections.Counter[str]:
        """The operator's write requests in this namespace since ``since``, per resource (and ``/status``)."""
        return collections.Counter(
            f"{r.resource}/{r.subresource}" if r.subresource else str(r.resource)
            for r in self.requests(since=since, writes=True)
        )

    def watching(self, resource: str, *, since: int = 0) -> bool:
        return any(r.watch and r.resource == resource and r.by_operator for r in self.log()[since:])

    async def settle(self, quiet: float = 1.0, within: float = 15.0, *, since: int = 0) -> None:
        """Wait until the operator has sent no request about this namespace for ``quiet`` seconds."""
        last_count, last_change = -1, time.monotonic()

        def calm() -> bool:
            nonlocal last_count, last_change
            count = len([r for r in self.requests(since=since) if not r.watch])
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            return time.monotonic() - last_change >= quiet

        await wait_for(calm, within, message="the operator kept sending requests")


async def get_object(where: Cluster | Emulator, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The stored object, or None when absent: from the emulator's memory, or through the API."""
    if isinstance(where, Emulator):
        try:
            obj = where.objects[resource, namespace, name]
        except KeyError:
            return None
        return None if obj.deleted else copy.deepcopy(obj.raw)
    return await where.get(resource, name, namespace)


def emulator_log(emulator: Emulator) -> Callable[[], list[Recorded]]:
    """A view of kmock's request list as :class:`Recorded` entries (converted once each)."""
    cache: list[Recorded] = []

    def log() -> list[Recorded]:
        requests = emulator._requests
        for request in requests[len(cache) :]:
            method = request.method.value if hasattr(request.method, "value") else str(request.method)
            agent = dict(request.headers).get("User-Agent", "")
            cache.append(Recorded.of(method.upper(), request.url.path, request.params, agent, request.data))
        return cache

    return log


# ---------------------------------------------------------------------------------------------------------------
# The operator, in a thread with its own event loop


class _LogTail(logging.Handler):
    def __init__(self, size: int = 400) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.size = size

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")
            del self.lines[: -self.size]


def _fresh_import(module: str, registry: Any) -> Any:
    """Import the handler module anew (and its sibling modules), registering into ``registry``.

    Module-level state (locks, clients, caches) starts empty, as in a new process, and the handlers land in a
    registry of this run only. The pure ``render`` module is shared. Afterwards ``sys.modules`` and the package
    are put back as they were, so other tests keep seeing (and monkeypatching) the modules they imported.
    """
    from kopf._core.intents import registries

    package_name = module.rpartition(".")[0]
    keep = {package_name, f"{package_name}.render"}
    siblings = [m for m in sys.modules if m == module or (package_name and m.startswith(package_name + "."))]
    saved = {name: sys.modules.pop(name) for name in siblings if name not in keep}
    package = sys.modules.get(package_name)
    saved_attributes = {n: getattr(package, n.rpartition(".")[2]) for n in saved if package is not None}
    saved_attributes = {n: v for n, v in saved_attributes.items() if v is not None}
    previous = registries.get_default_registry()
    registries.set_default_registry(registry)
    try:
        return importlib.import_module(module)
    finally:
        registries.set_default_registry(previous)
        sys.modules.update(saved)
        for name, value in saved_attributes.items():
            setattr(package, name.rpartition(".")[2], value)


def watched_resources(registry: Any) -> set[str]:
    """The resources (``group/version/plural``) the registry's handlers make kopf watch, where it can tell."""
    found: set[str] = set()
    for part in (registry._indexing, registry._watching, registry._spawning, registry._changing):
        for selector in part.get_all_selectors():
            plural = selector.plural or (selector.any_name if isinstance(selector.any_name, str) else None)
            if plural and selector.version is not None:
                group = selector.group or ""
                found.add(f"{group}/{selector.version}/{plural}" if group else f"{selector.version}/{plural}")
    return found


class OperatorRunner:
    """Start and stop the operator (``kopf.operator(clusterwide=True, standalone=True)``) against a cluster.

    The operator gets its own thread and event loop (uvloop when the test runs on uvloop), so that its shutdown
    is quick and cannot touch the test's loop, where the emulator serves. It can be started again after a stop.
    """

    def __init__(self, cluster: Cluster, module: str = "cliproxy_operator.handlers",
                 loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> None:  # fmt: skip
        self.cluster, self.module = cluster, module
        self.loop_factory = loop_factory or asyncio.new_event_loop
        self.logs = _LogTail()
        self.error: BaseException | None = None
        self.starts = 0
        self.watched: set[str] = set()
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def describe(self) -> str:
        tail = "\n".join(self.logs.lines[-40:])
        return f"operator error: {self.error!r}\nlast operator log lines:\n{tail}"

    async def start(self, *, within: float = 20.0, wait_for_watches: Iterable[str] = ()) -> None:
        import kopf
        from kopf._core.intents import registries

        assert not self.running, "the operator is already running"
        registry = registries.SmartOperatorRegistry()
        _fresh_import(self.module, registry)
        self.watched = watched_resources(registry) | set(wait_for_watches)
        settings = kopf.OperatorSettings()
        stop = self._stop = threading.Event()
        since = self.cluster.mark()
        self.error = None
        kopf_logger = logging.getLogger("kopf")
        if self.logs not in kopf_logger.handlers:
            kopf_logger.addHandler(self.logs)
        self._old_level = kopf_logger.level
        kopf_logger.setLevel(logging.INFO)

        def target() -> None:
            loop = self.loop_factory()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(
                    kopf.operator(
                        registry=registry, settings=settings, clusterwide=True, standalone=True, stop_flag=stop
                    )
                )
            except BaseException as error:  # reported by stop() and the waits
                self.error = error
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                    loop.run_until_complete(loop.shutdown_default_executor())
                asyncio.set_event_loop(None)
                loop.close()

        self._thread = threading.Thread(target=target, name=f"kopf-operator-{self.starts}", daemon=True)
        self._thread.start()
        self.starts += 1

        def ready() -> bool:
            if not self.running:
                raise AssertionError(f"the operator exited during start-up\n{self.describe()}")
            return all(self.cluster.watching(r, since=since) for r in self.watched)

        await wait_for(ready, within, message=lambda: f"kopf did not watch {sorted(self.watched)}\n{self.describe()}")

    def cpu_seconds(self) -> float:
        """The CPU time of the operator's event loop thread (its executor's threads aside); 0 when stopped."""
        thread = self._thread
        if thread is None or thread.ident is None or not thread.is_alive():
            return 0.0
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except OSError:  # the thread ended meanwhile
            return 0.0

    def _stop_failed(self) -> str:
        return f"the operator did not stop\n{self.describe()}"

    async def stop(self, *, within: float = 20.0) -> None:
        if self._thread is None:
            return
        assert self._stop is not None
        self._stop.set()
        thread = self._thread
        await wait_for(lambda: not thread.is_alive(), within, message=self._stop_failed)
        self._thread = None
        kopf_logger = logging.getLogger("kopf")
        kopf_logger.removeHandler(self.logs)
        kopf_logger.setLevel(self._old_level)
        if self.error is not None and not isinstance(self.error, asyncio.CancelledError):
            raise AssertionError(f"the operator failed\n{self.describe()}") from self.error


# ---------------------------------------------------------------------------------------------------------------
# envtest: a real etcd + kube-apiserver on loopback, behind a recording proxy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def envtest_assets() -> Path | None:
    """``$KUBEBUILDER_ASSETS`` when it holds ``etcd`` and ``kube-apiserver``."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        return None
    path = Path(assets)
    if all(os.access(path / b, os.X_OK) for b in ("etcd", "kube-apiserver")):
        return path
    return None


class RecordingProxy:
    """A plain-HTTP reverse proxy on loopback in front of the API server, recording every request.

    It runs in a thread of its own (a session-wide server cannot live in one test's event loop); it adds the
    bearer token and skips TLS verification towards the API server's self-signed certificate; watches stream.
    """

    def __init__(self, upstream: str, token: str) -> None:
        self.upstream, self.token = upstream.rstrip("/"), token
        self.records: list[Recorded] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="recording-proxy", daemon=True)
        self._runner: aiohttp.web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> str:
        self._thread.start()
        port = free_port()
        asyncio.run_coroutine_threadsafe(self._start(port), self._loop).result(30)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def _start(self, port: int) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        app = aiohttp.web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = aiohttp.web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        await aiohttp.web.TCPSite(self._runner, "127.0.0.1", port).start()

    async def _forward(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        data: Any = None
        with contextlib.suppress(ValueError):
            data = json.loads(body) if body else None
        agent = request.headers.get("User-Agent", "")
        self.records.append(Recorded.of(request.method, request.path, dict(request.query), agent, data))
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept", "user-agent")}
        headers["Authorization"] = f"Bearer {self.token}"
        url = self.upstream + str(request.rel_url)
        async with self._session.request(request.method, url, data=body or None, headers=headers, ssl=False) as up:
            response = aiohttp.web.StreamResponse(status=up.status)
            response.content_type = up.content_type or "application/json"
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    def log(self) -> list[Recorded]:
        return self.records

    def stop(self) -> None:
        async def close() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class EnvTest:
    """etcd + kube-apiserver from ``$KUBEBUILDER_ASSETS`` (setup-envtest's layout), on loopback ports.

    The API server serves TLS with a self-signed certificate, authenticates a static bearer token of a
    ``system:masters`` user, authorises everything, and has no controller-manager: no garbage collection and no
    namespace finalisation, like the emulator.
    """

    def __init__(self, assets: Path, workdir: Path) -> None:
        self.assets, self.workdir = assets, workdir
        self.token = uuid.uuid4().hex
        self.processes: list[subprocess.Popen[bytes]] = []
        self.api_url = ""
        self.proxy: RecordingProxy | None = None

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen([str(self.assets / name), *args], stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def _log_tail(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def _api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.api_url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                text = response.read()
                return response.status, json.loads(text) if text.strip().startswith(b"{") else text
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            return 0, str(error)

    def start(self, timeout: float = 90.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
        self._spawn("etcd", [
            f"--data-dir={self.workdir / 'etcd'}", f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}", f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}", f"--initial-cluster=default={peer_url}",
            "--unsafe-no-fsync",
        ])  # fmt: skip
        key = self.workdir / "sa.key"
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{self.token},admin,admin-uid,"system:masters"\n')
        certs = self.workdir / "certs"
        certs.mkdir(exist_ok=True)
        self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}", f"--cert-dir={certs}", f"--token-auth-file={tokens}",
            "--authorization-mode=AlwaysAllow", f"--service-account-key-file={key}",
            f"--service-account-signing-key-file={key}", f"--service-account-issuer=https://127.0.0.1:{api_port}",
            "--service-cluster-ip-range=10.0.0.0/24", "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
        ])  # fmt: skip
        self.api_url = f"https://127.0.0.1:{api_port}"
        deadline = time.monotonic() + timeout
        while self._api("GET", "/readyz")[0] != 200:
            for process, name in zip(self.processes, ("etcd", "kube-apiserver"), strict=True):
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}):\n{self._log_tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"kube-apiserver not ready:\n{self._log_tail('kube-apiserver')}")
            time.sleep(0.2)
        self.apply_crds(deadline)
        self.proxy = RecordingProxy(self.api_url, self.token)
        self.proxy.start()

    def apply_crds(self, deadline: float) -> None:
        crds = load_crds()
        if not crds:
            raise RuntimeError(f"no CustomResourceDefinition in {CRD_DIR}")
        for crd in crds:
            status, body = self._api("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
            if status not in (200, 201, 409):
                raise RuntimeError(f"CRD {crd['metadata']['name']} rejected: {status} {body!r}")
        for crd in crds:
            name = crd["metadata"]["name"]
            path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
            group_version = f"/apis/{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}"
            while True:
                status, body = self._api("GET", path)
                conditions = body.get("status", {}).get("conditions", []) if isinstance(body, dict) else []
                established = any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
                if established and self._api("GET", group_version)[0] == 200:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"CRD {name} not established: {body!r}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)


__all__ = [
    "CONFIGMAPS", "CREDENTIALS", "EVENTS", "ROUTES", "SECRETS", "TEST_AGENT",
    "ApiError", "Cluster", "Emulator", "EnvTest", "OperatorRunner", "Recorded", "RecordingProxy",
    "apply_defaults", "b64", "emulator_log", "envtest_assets", "get_object", "load_crds", "matching", "merge_patch",
    "parse_path", "resource_path", "setup_emulator", "unb64", "wait_for", "write_kubeconfig",
]  # fmt: skip
