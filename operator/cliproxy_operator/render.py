"""The operator's reconcile logic as a pure function: routes, credentials and secret data in, proxy config out.

Each gateway gets a ConfigMap document (routing, no secrets) in exactly the contract the proxy loads, and a Secret
whose files the document names (``api-key-file``, ``token-file``). Output is deterministic and carries a digest,
so unchanged input writes nothing. A broken route or credential is reported and left out; the rest still render.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from cliproxy_proxy.catalog import KINDS
from cliproxy_proxy.config import ConfigError, parse_config

CONFIG_KEY = "config.json"  # JSON is YAML too; it renders and loads many times faster
PACKED_KEY = "config.json.gz"  # the same document gzipped, in binaryData, when it is too large to keep plain
INLINE_LIMIT = 900 * 1024  # plain JSON up to here (readable with kubectl); Kubernetes caps an object at 1 MiB
PACKED_LIMIT = 1000 * 1024  # room left for metadata under the cap
CLIENT_KEYS_FILE = "client-keys"
COMPACT_ABOVE = 512 * 1024
TOKEN_PROVIDERS = frozenset({"kiro", "cursor", "ampcode", "minimax", "roo", "kilo"})
_POLICY_KEYS = {
    "requestRetry": ("request-retry",), "maxRetryInterval": ("max-retry-interval",),
    "maxRetryCredentials": ("max-retry-credentials",), "connectTimeoutSeconds": ("timeouts", "connect"),
    "readTimeoutSeconds": ("timeouts", "read"),
}  # fmt: skip

Resource = Mapping[str, Any]


@dataclass(frozen=True)
class Problem:
    """Why a resource is not (fully) rendered: becomes a status condition and an Event."""

    reason: str
    message: str


@dataclass
class CredentialState:
    usable_keys: int = 0
    files: list[str] = field(default_factory=list)  # secret file names holding its keys or token
    problems: list[Problem] = field(default_factory=list)


@dataclass
class RouteState:
    gateway: str
    models: list[str] = field(default_factory=list)  # exposed ids, when the route lists its models
    rendered: bool = False
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class Gateway:
    """One gateway's rendered objects."""

    name: str
    config_text: str
    config_payload: Mapping[str, Mapping[str, str]]  # the ConfigMap's ``data`` or ``binaryData``
    secret_data: Mapping[str, str]
    routes: tuple[str, ...]  # the contributing routes: one owner reference each
    digest: str


@dataclass
class Rendering:
    gateways: dict[str, Gateway]
    credentials: dict[str, CredentialState]
    routes: dict[str, RouteState]
    held: set[str] = field(default_factory=set)  # gateways that failed to render: their last objects stay


def config_payload(text: str) -> dict[str, dict[str, str]] | None:
    """The ConfigMap content for a rendered document: plain, else gzipped (16x on large configs), else None."""
    raw = text.encode()
    if len(raw) <= INLINE_LIMIT:
        return {"data": {CONFIG_KEY: text}}
    packed = base64.b64encode(gzip.compress(raw, 6, mtime=0)).decode()  # mtime=0: same input, same bytes
    return {"binaryData": {PACKED_KEY: packed}} if len(packed) <= PACKED_LIMIT else None


def _name(resource: Resource) -> str:
    return str(resource.get("metadata", {}).get("name", ""))


def _resolve(ref: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]], what: str) -> str | Problem:
    """A secret's value, or the problem that stops it; problems name the Secret and key, never a value."""
    name, key = ref.get("name"), ref.get("key")
    data = secrets.get(str(name))
    if data is None:
        return Problem("SecretNotFound", f"{what}: Secret {name!r} does not exist")
    value = data.get(str(key))
    if value is None:
        return Problem("SecretKeyNotFound", f"{what}: Secret {name!r} has no key {key!r}")
    if not value.strip():
        return Problem("SecretKeyEmpty", f"{what}: key {key!r} of Secret {name!r} is empty")
    return value.strip()


def _credentials(
    credentials: list[Resource], secrets: Mapping[str, Mapping[str, str]], files: dict[str, str]
) -> dict[str, CredentialState]:
    states: dict[str, CredentialState] = {}
    for credential in sorted(credentials, key=_name):
        name, spec = _name(credential), credential.get("spec", {})
        state = states[name] = CredentialState()
        if spec.get("provider") not in KINDS:
            state.problems.append(Problem("InvalidSpec", f"unknown provider {spec.get('provider')!r}"))
            continue
        refs = [
            (f"apiKeys[{i}]", k.get("secretKeyRef", {}), f"{name}.key-{i}")
            for i, k in enumerate(spec.get("apiKeys") or [])
        ]
        if spec.get("tokenSecretRef"):
            refs.append(("tokenSecretRef", spec["tokenSecretRef"], f"{name}.token"))
        for what, ref, file in refs:
            value = _resolve(ref, secrets, what)
            if isinstance(value, Problem):
                state.problems.append(value)
            else:
                files[file] = value
                state.files.append(file)
        state.usable_keys = len(state.files)
        if not state.files and not state.problems:
            state.problems.append(Problem("NoKeys", "neither apiKeys nor tokenSecretRef gives a key"))
    return states


def _entries(route: Resource, credential: Resource, state: CredentialState, priority: int) -> list[dict[str, Any]]:
    """The config entries one route contributes through one credential."""
    spec, rspec = credential["spec"], route["spec"]
    provider = spec["provider"]
    common: dict[str, Any] = {}
    if provider != "openai-compatibility":
        common["name"] = f"{_name(route)}/{_name(credential)}"
    prefix = rspec.get("prefix") or spec.get("prefix")
    for key, value in (
        ("prefix", prefix), ("base-url", spec.get("baseURL")), ("proxy-url", spec.get("proxyURL")),
        ("refresh-url", spec.get("refreshURL") if provider == "kiro" else None),
        ("headers", spec.get("headers") or None), ("priority", priority or None),
        ("force-model-prefix", rspec.get("forceModelPrefix") if prefix else None),
        ("excluded-models", rspec.get("excludedModels") or None),
    ):  # fmt: skip
        if value is not None:
            common[key] = value
    if rspec.get("models"):
        common["models"] = [{k: m[k] for k in ("name", "alias") if m.get(k)} for m in rspec["models"]]
    if spec.get("rateLimit"):
        common["rate-limit"] = dict(spec["rateLimit"])
    if provider == "openai-compatibility":
        entry = {"name": spec.get("providerName") or _name(credential), **common,
                 "api-key-entries": [{"api-key-file": f} for f in state.files]}  # fmt: skip
        if spec.get("modelsEndpoint"):
            entry["models-endpoint"] = spec["modelsEndpoint"]
        return [entry]
    if provider == "vertex-api-key" and spec.get("vertex"):
        common.update({k: v for k, v in spec["vertex"].items() if k in ("project", "location")})
    source = "token-file" if spec.get("tokenSecretRef") else "api-key-file"
    return [{**common, source: file} for file in state.files]


def _exposed(route: Resource, prefix: str | None) -> list[str]:
    spec = route["spec"]
    ids: list[str] = []
    for model in spec.get("models") or []:
        exposed = model.get("alias") or model["name"]
        if prefix:
            ids.append(f"{prefix}/{exposed}")
        if not prefix or not spec.get("forceModelPrefix"):
            ids.append(exposed)
    return sorted(set(ids))


def _set(document: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        document = document.setdefault(key, {})
    document[path[-1]] = value


def render(
    routes: list[Resource],
    credentials: list[Resource],
    secrets: Mapping[str, Mapping[str, str]],
    client_keys: Mapping[str, list[str]] | None = None,
    keep: Iterable[str] = (),
) -> Rendering:
    """Every gateway of one namespace, from its ProviderRoutes, ProviderCredentials and their Secrets' data.

    ``client_keys`` maps a gateway to the keys its clients must present; a gateway without any serves
    unauthenticated (in-cluster traffic behind a ClusterIP Service, guarded by NetworkPolicy). A gateway in
    ``keep`` (its objects exist) renders even when no route is left: empty, so that every proxy watching it
    converges on serving nothing instead of some keeping the deleted routes.
    """
    files: dict[str, str] = {}
    creds = _credentials(credentials, secrets, files)
    by_name = {_name(c): c for c in credentials}
    states: dict[str, RouteState] = {}
    documents: dict[str, dict[str, Any]] = {}
    contributors: dict[str, list[str]] = {}
    used_files: dict[str, set[str]] = {}
    claimed: dict[tuple[str, str], str] = {}
    policy_from: dict[tuple[str, str], tuple[str, Any]] = {}
    for route in sorted(routes, key=_name):
        name, spec = _name(route), route.get("spec", {})
        gateway = str(spec.get("gateway") or "default")
        state = states[name] = RouteState(gateway)
        refs = spec.get("credentials") or []
        if not refs:
            state.problems.append(Problem("InvalidSpec", "spec.credentials lists no credential"))
            continue
        usable = []
        for ref in refs:
            cred_name = str(ref.get("name"))
            if cred_name not in by_name:
                state.problems.append(Problem("CredentialNotFound", f"ProviderCredential {cred_name!r} does not exist"))
            elif not creds[cred_name].files:
                reasons = "; ".join(p.message for p in creds[cred_name].problems)
                state.problems.append(Problem("CredentialNotReady", f"ProviderCredential {cred_name!r}: {reasons}"))
            else:
                usable.append((by_name[cred_name], int(ref.get("priority") or 0)))
        if not usable:
            continue
        prefixes = {spec.get("prefix") or c["spec"].get("prefix") for c, _ in usable}
        ids = sorted({i for p in prefixes for i in _exposed(route, p)})
        taken = sorted(i for i in ids if (gateway, i) in claimed)
        if taken:
            owner = claimed[(gateway, taken[0])]
            state.problems.append(
                Problem("DuplicateModel", f"model ids {', '.join(taken)} already served by route {owner!r}")
            )
            continue
        document = documents.setdefault(gateway, {})
        for credential, priority in usable:
            block = credential["spec"]["provider"]
            document.setdefault(block, []).extend(_entries(route, credential, creds[_name(credential)], priority))
            used_files.setdefault(gateway, set()).update(creds[_name(credential)].files)
        for key, path in _POLICY_KEYS.items():
            value = (spec.get("policy") or {}).get(key)
            if value is None:
                continue
            first = policy_from.setdefault((gateway, key), (name, value))
            if first[1] != value:
                state.warnings.append(
                    Problem("PolicyConflict", f"policy.{key} differs from route {first[0]!r}; theirs applies")
                )
            else:
                _set(document, path, value)
        for model_id in ids:
            claimed[(gateway, model_id)] = name
        state.models, state.rendered = ids, True
        contributors.setdefault(gateway, []).append(name)
    for gateway in keep:
        documents.setdefault(gateway, {})
    gateways = {}
    held: set[str] = set()
    for gateway, document in documents.items():
        secret_data = {f: files[f] for f in sorted(used_files.get(gateway, ()))}
        keys = (client_keys or {}).get(gateway)
        head: dict[str, Any] = {"port": 8317, "token-refresh": False}  # the operator refreshes; proxies adopt
        if keys:
            head["api-keys-file"] = CLIENT_KEYS_FILE
            secret_data[CLIENT_KEYS_FILE] = "\n".join(keys) + "\n"
        else:
            head["allow-unauthenticated"] = True
        ordered = {**head, **{k: document[k] for k in sorted(document) if k not in KINDS},
                   **{k: document[k] for k in KINDS if k in document}}  # fmt: skip
        text = orjson.dumps(ordered, option=orjson.OPT_INDENT_2).decode() + "\n"
        if len(text) > COMPACT_ABOVE:  # a large gateway trades readability for headroom under the 1 MiB limit
            text = orjson.dumps(ordered).decode() + "\n"
        problem = None
        try:
            parse_config(ordered)
        except ConfigError as error:  # a bug in this function, not the user's: say so, render nothing for it
            problem = Problem("RenderFailed", f"rendered config is invalid: {error}")
        payload = config_payload(text)
        if payload is None and problem is None:
            problem = Problem("ConfigTooLarge", f"gateway {gateway!r} renders {len(text) // 1024} KiB, "
                                         "over 1 MiB even gzipped: split its routes across gateways")  # fmt: skip
        if problem is not None:
            for contributor in contributors.get(gateway, []):
                states[contributor].problems.append(problem)
                states[contributor].rendered = False
            held.add(gateway)
            continue
        assert payload is not None
        digest = hashlib.sha256(text.encode() + orjson.dumps(secret_data, option=orjson.OPT_SORT_KEYS)).hexdigest()
        gateways[gateway] = Gateway(gateway, text, payload, secret_data, tuple(contributors.get(gateway, [])), digest)
    return Rendering(gateways, creds, states, held)
