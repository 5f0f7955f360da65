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
from typing import TYPE_CHECKING, Any

import orjson

from cliproxy_proxy.contract import KINDS, MAX_FALLBACKS, ConfigError, header_problem, parse_config

from .secret_rules import OPT_IN_LABEL, refresh_url_refusal

if TYPE_CHECKING:
    from .clientkeys import ClientKeyRendering, ClientKeyState

CONFIG_KEY = "config.json"  # JSON is YAML too; it renders and loads many times faster
PACKED_KEY = "config.json.gz"  # the same document gzipped, in binaryData, when it is too large to keep plain
INLINE_LIMIT = 900 * 1024  # plain JSON up to here (readable with kubectl); Kubernetes caps an object at 1 MiB
PACKED_LIMIT = 1000 * 1024  # room left for metadata under the cap
CLIENT_KEYS_FILE = "client-keys"
COMPACT_ABOVE = 512 * 1024
TOKEN_PROVIDERS = frozenset({"kiro", "cursor", "ampcode", "minimax", "roo", "kilo"})
_POLICY_KEYS = {
    "requestRetry": "request-retry", "maxRetryInterval": "max-retry-interval",
    "maxRetryCredentials": "max-retry-credentials", "connectTimeoutSeconds": "connect-timeout",
    "readTimeoutSeconds": "read-timeout",
}  # fmt: skip

Resource = Mapping[str, Any]


@dataclass(frozen=True)
class Problem:
    """Why a resource is not (fully) rendered: becomes a status condition and an Event."""

    reason: str
    message: str


@dataclass(frozen=True)
class SecretConsent:
    """What the referenced Secrets' owners allowed: the kube layer hands render data of opted-in Secrets only."""

    not_opted_in: frozenset[str] = frozenset()  # Secrets that exist but lack the opt-in label
    refresh_urls: Mapping[str, str] = field(default_factory=dict)  # a token Secret's allowed refreshURL


@dataclass
class CredentialState:
    usable_keys: int = 0
    identity: bool = False  # authenticated by the pod's cloud identity, not by keys
    files: list[str] = field(default_factory=list)  # secret file names holding its keys or token
    problems: list[Problem] = field(default_factory=list)


@dataclass
class RouteState:
    gateway: str
    models: list[str] = field(default_factory=list)  # exposed ids, when the route lists its models
    rendered: bool = False
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # a condition and a Warning Event
    notices: list[Problem] = field(default_factory=list)  # a condition only: the normal state of a new gateway


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
    clients: dict[str, ClientKeyState] = field(default_factory=dict)  # by ClientKey name


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


def _refused(what: str, ref: Mapping[str, Any], spec: Mapping[str, Any], consent: SecretConsent) -> Problem | None:
    """The Secret owner's consent: the opt-in label first, then, for a token, where it may be refreshed."""
    secret = str(ref.get("name"))
    if secret in consent.not_opted_in:
        return Problem("SecretNotOptedIn", f"{what}: Secret {secret!r} lacks the label {OPT_IN_LABEL}=true "
                       "that lets it back a credential")  # fmt: skip
    if what == "tokenSecretRef":
        refusal = refresh_url_refusal(spec["provider"], spec.get("refreshURL"), consent.refresh_urls.get(secret))
        return None if refusal is None else Problem("RefreshURLNotAllowed", refusal)
    return None


def _credentials(
    credentials: list[Resource],
    secrets: Mapping[str, Mapping[str, str]],
    files: dict[str, str],
    consent: SecretConsent,
) -> dict[str, CredentialState]:
    states: dict[str, CredentialState] = {}
    for credential in sorted(credentials, key=_name):
        name, spec = _name(credential), credential.get("spec", {})
        state = states[name] = CredentialState()
        if spec.get("provider") not in KINDS:
            state.problems.append(Problem("InvalidSpec", f"unknown provider {spec.get('provider')!r}"))
            continue
        bad_header = header_problem(spec.get("headers") or {})  # here, or the whole gateway would fail to render
        if bad_header is not None:
            state.problems.append(Problem("InvalidSpec", f"headers: {bad_header}"))
            continue
        refs = [
            (f"apiKeys[{i}]", k.get("secretKeyRef", {}), f"{name}.key-{i}")
            for i, k in enumerate(spec.get("apiKeys") or [])
        ]
        if spec.get("tokenSecretRef"):
            refs.append(("tokenSecretRef", spec["tokenSecretRef"], f"{name}.token"))
        if spec["provider"] == "bedrock":
            refs = []  # it presents no key (whatever else the spec names): nothing is copied into the gateway
        for what, ref, file in refs:
            value = _refused(what, ref, spec, consent) or _resolve(ref, secrets, what)
            if isinstance(value, Problem):
                state.problems.append(value)
            else:
                files[file] = value
                state.files.append(file)
        state.identity = _keyless(spec)
        state.usable_keys = len(state.files) or int(state.identity)
        if spec["provider"] == "bedrock":
            state.usable_keys = 1  # no keys: it signs as the gateway pod's own AWS identity (IRSA, Pod Identity)
        elif not state.usable_keys and not state.problems:
            state.problems.append(Problem("NoKeys", "neither apiKeys nor tokenSecretRef gives a key"))
    return states


def _entries(route: Resource, credential: Resource, state: CredentialState, priority: int, weight: int
             ) -> list[dict[str, Any]]:  # fmt: skip
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
        ("weight", weight if weight != 1 else None),
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
    if provider == "bedrock":
        return [{**common, "region": (spec.get("bedrock") or {}).get("region")}]
    vertex, azure = spec.get("vertex") or {}, spec.get("azure") or {}
    if provider == "vertex-api-key" and vertex:
        common.update({k: v for k, v in vertex.items() if k in ("project", "location")})
    if provider == "azure-openai":
        common.update({key: azure[field] for field, key in _AZURE_KEYS.items() if azure.get(field)})
        if "entra" in azure:
            common["entra"] = {key: azure["entra"][field] for field, key in _ENTRA_KEYS.items()
                               if azure["entra"].get(field)}  # fmt: skip
    if state.identity:
        return [{**common, "adc": True} if provider == "vertex-api-key" else common]
    source = "token-file" if spec.get("tokenSecretRef") else "api-key-file"
    if vertex.get("auth") == "serviceAccountKey":
        source = "service-account-file"
    return [{**common, source: file} for file in state.files]


_AZURE_KEYS = {"resource": "resource", "api": "api", "apiVersion": "api-version"}
_ENTRA_KEYS = {"tenantID": "tenant-id", "clientID": "client-id", "authority": "authority"}


def _keyless(spec: Mapping[str, Any]) -> bool:
    """A credential whose pod identity authenticates it (GKE or AKS Workload Identity): no Secret to read."""
    if spec.get("provider") == "vertex-api-key":
        return (spec.get("vertex") or {}).get("auth") == "workloadIdentity"
    return spec.get("provider") == "azure-openai" and "entra" in (spec.get("azure") or {})


def _fallbacks(spec: Mapping[str, Any], ids: list[str], state: RouteState) -> dict[str, list[str]]:
    """The route's fallbacks for the models it serves, each list without the model itself, repeats or excess.

    A route names fallbacks only for its own models: one keyed by another route's model would take that route's
    traffic (and its clients' prompts) to a model of this author's choosing.
    """
    kept = {}
    for model, others in (spec.get("fallbacks") or {}).items():
        if model not in ids:
            state.warnings.append(Problem("InvalidFallback", f"fallbacks: {model!r} is not a model this route "
                                          "serves (list it in spec.models); ignored"))  # fmt: skip
            continue
        chain = [other for other in dict.fromkeys(map(str, others)) if other != model][:MAX_FALLBACKS]
        if chain:
            kept[model] = chain
    return kept


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


def _age(resource: Resource) -> tuple[str, str]:
    """Oldest first: creationTimestamp (RFC 3339 in UTC sorts as text), then name."""
    return str(resource.get("metadata", {}).get("creationTimestamp") or ""), _name(resource)


def _policy(route: Resource) -> dict[str, Any] | None:
    """The route's retry/timeout policy in the config's per-entry form: it governs only this route's models."""
    given = route["spec"].get("policy") or {}
    policy = {key: given[field] for field, key in _POLICY_KEYS.items() if given.get(field) is not None}
    return policy or None


def _contested(route: Resource, prefixes: set[Any], claimed: Mapping[tuple[str, str], str], gateway: str) -> list[
        tuple[dict[str, Any], list[str]]]:  # fmt: skip
    """Each of the route's models that an older route already serves under one of its ids, with those ids."""
    spec = route["spec"]
    found = []
    for model in spec.get("models") or []:
        alone = {**route, "spec": {**spec, "models": [model]}}
        ids = sorted({i for p in prefixes for i in _exposed(alone, p) if (gateway, i) in claimed})
        if ids:
            found.append((model, ids))
    return found


def _open_gateways(routes: list[Resource], states: Mapping[str, RouteState], contributors: Mapping[str, list[str]],
                   client_keys: Mapping[str, list[str]]) -> set[str]:  # fmt: skip
    """Gateways without client keys that every rendered route opens with ``allowUnauthenticated: true``.

    Closed wins: a route that asks to open a gateway another route keeps closed is told so; a keyless gateway
    that stays closed tells each of its routes how to let callers in.
    """
    asks = {_name(r) for r in routes if r.get("spec", {}).get("allowUnauthenticated") is True}
    opened = set()
    for gateway, names in contributors.items():
        if client_keys.get(gateway):
            continue
        if all(n in asks for n in names):
            opened.add(gateway)
            continue
        for n in names:
            message = (f"gateway {gateway!r} has no client keys and refuses callers: label a Secret "
                       f"cliproxy.io/client-keys-for={gateway}")  # fmt: skip
            if n in asks:
                states[n].warnings.append(Problem("GatewayClosed", message + ", or set allowUnauthenticated: true "
                                                  "on every one of its routes (closed wins)"))  # fmt: skip
            else:
                states[n].notices.append(Problem("NoClientKeys", message))
    return opened


def render(
    routes: list[Resource],
    credentials: list[Resource],
    secrets: Mapping[str, Mapping[str, str]],
    client_keys: Mapping[str, list[str]] | None = None,
    consent: SecretConsent | None = None,
    keep: Iterable[str] = (),
    clients: ClientKeyRendering | None = None,
) -> Rendering:
    """Every gateway of one namespace, from its ProviderRoutes, ProviderCredentials and their Secrets' data.

    ``secrets`` holds the data of opted-in Secrets only; ``consent`` names the others and the refresh URLs
    their owners allow. ``client_keys`` maps a gateway to the keys its clients must present; a gateway without
    any refuses callers, unless every one of its routes says ``allowUnauthenticated: true``. A gateway in
    ``keep`` (its objects exist) renders even when no route is left: empty, so that every proxy watching it
    converges on serving nothing instead of some keeping the deleted routes. ``clients`` are the namespace's
    ClientKeys, already resolved (clientkeys.render_client_keys): each gateway's entries and their key files.
    """
    files: dict[str, str] = {}
    creds = _credentials(credentials, secrets, files, consent or SecretConsent())
    by_name = {_name(c): c for c in credentials}
    states: dict[str, RouteState] = {}
    documents: dict[str, dict[str, Any]] = {}
    contributors: dict[str, list[str]] = {}
    used_files: dict[str, set[str]] = {}
    claimed: dict[tuple[str, str], str] = {}
    for route in sorted(routes, key=_age):  # the older route keeps a contested model
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
            elif not creds[cred_name].usable_keys:
                reasons = "; ".join(p.message for p in creds[cred_name].problems)
                state.problems.append(Problem("CredentialNotReady", f"ProviderCredential {cred_name!r}: {reasons}"))
            else:
                usable.append((by_name[cred_name], int(ref.get("priority") or 0), int(ref.get("weight", 1))))
        if not usable:
            continue
        prefixes = {spec.get("prefix") or c["spec"].get("prefix") for c, _, _ in usable}
        contested = _contested(route, prefixes, claimed, gateway)
        for model, taken in contested:
            owners = sorted({claimed[(gateway, i)] for i in taken})
            state.warnings.append(Problem("DuplicateModel", f"model {model['name']!r} ({', '.join(taken)}) is "
                                          f"already served by older route {', '.join(map(repr, owners))}; "
                                          "this route leaves it out"))  # fmt: skip
        if contested:
            kept = [m for m in spec.get("models") or [] if all(m is not c for c, _ in contested)]
            if not kept:
                state.problems.extend(state.warnings)
                state.warnings = []
                continue
            route = {**route, "spec": {**spec, "models": kept}}
        ids = sorted({i for p in prefixes for i in _exposed(route, p)})
        document = documents.setdefault(gateway, {})
        policy = _policy(route)
        for credential, priority, weight in usable:
            block = credential["spec"]["provider"]
            entries = _entries(route, credential, creds[_name(credential)], priority, weight)
            if policy is not None:
                entries = [{**entry, "policy": policy} for entry in entries]
            document.setdefault(block, []).extend(entries)
            used_files.setdefault(gateway, set()).update(creds[_name(credential)].files)
        fallbacks = _fallbacks(spec, ids, state)
        if fallbacks:
            document.setdefault("fallbacks", {}).update(fallbacks)
        for model_id in ids:
            claimed[(gateway, model_id)] = name
        state.models, state.rendered = ids, True
        contributors.setdefault(gateway, []).append(name)
    for gateway in keep:
        documents.setdefault(gateway, {})
    client_entries = clients.entries if clients is not None else {}
    keyed = {**(client_keys or {}), **{gateway: ["(ClientKeys)"] for gateway in client_entries}}
    open_to = _open_gateways(routes, states, contributors, keyed)
    gateways = {}
    held: set[str] = set()
    for gateway, document in documents.items():
        secret_data = {f: files[f] for f in sorted(used_files.get(gateway, ()))}
        keys = (client_keys or {}).get(gateway)
        head: dict[str, Any] = {"port": 8317, "token-refresh": False}  # the operator refreshes; proxies adopt
        if keys:
            head["api-keys-file"] = CLIENT_KEYS_FILE
            secret_data[CLIENT_KEYS_FILE] = "\n".join(keys) + "\n"
        elif gateway in open_to:
            head["allow-unauthenticated"] = True
        if gateway in client_entries:
            head["client-keys"] = client_entries[gateway]
            secret_data.update(clients.files[gateway] if clients is not None else {})
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
    client_states = clients.states if clients is not None else {}
    for client in client_states.values():
        if client.rendered and client.gateway not in gateways:
            client.rendered = False
            client.notices.append(Problem("GatewayNotRendered", f"gateway {client.gateway!r} has no ready "
                                          "ProviderRoute in this namespace: nothing serves this key yet"))  # fmt: skip
    return Rendering(gateways, creds, states, held, client_states)
