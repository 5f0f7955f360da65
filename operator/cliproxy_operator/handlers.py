"""kopf handlers: thin. Events mark their namespace dirty; one coalesced reconcile per namespace renders it.

kopf's indexes hold what the reconcile needs (routes, credentials, client keys, the rendered objects as they
are), so a reconcile reads only the provider Secrets its credentials name. Index functions are coroutines: kopf
runs a plain function in a thread, a hop (and a wake-up of the loop) per object and event. The handlers are plain event
handlers: kopf then writes nothing of its own (no finalizers, no progress annotations). What the operator wrote
it remembers, so its own writes' watch events are ignored, unchanged objects and statuses are not written again,
and each Warning Event is posted once. Nothing is written in a namespace being deleted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from secrets import token_urlsafe
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from . import kopf_gate, tokens, usage
from .clientkeys import KEY_PREFIX, ROTATE_ANNOTATION, expired, render_client_keys, status_of
from .coalesce import Coalescer
from .kopf_quiet import NoDiffBase
from .kube import (
    CLIENT_KEY_LABEL,
    CLIENT_KEYS_LABEL,
    CONFIG_MAP,
    DIGEST,
    GATEWAY_LABEL,
    GROUP,
    MANAGED_BY,
    NAMESPACES_ENV,
    ROTATED_FOR,
    SECRET,
    VERSION,
    client_keys,
    content_digest,
    generated_key_secret,
    namespace_gone,
    patch_status,
    post_event,
    read_secrets,
    rendered_objects,
    write,
    write_generated,
)
from .render import Problem, render
from .status import Wanted, conditions, new_problems, summary, unchanged

ROUTES, CREDENTIALS, CLIENTKEYS = "providerroutes", "providercredentials", "clientkeys"
NAMESPACED = bool(os.environ.get(NAMESPACES_ENV))
API_THREADS = 16  # API requests in flight at once
REFUSED_SECONDS = 300.0  # a namespace that refused a write as terminating is left alone this long
Key = tuple[str, str, str]  # (kind or plural, namespace, name)
log = logging.getLogger("cliproxy.operator")
kopf_gate.install()  # a start with thousands of objects waits seconds, not minutes, for kopf's index gate

_clients: dict[str, Any] = {}
_indexes: dict[str, kopf.Index[str, Any]] = {}
_ours: dict[Key, collections.deque[str]] = {}  # resourceVersions the operator's own writes produced
_known: dict[Key, tuple[str, tuple[str, ...]]] = {}  # rendered objects as last written: (digest, owner uids)
_statuses: dict[Key, tuple[str, dict[str, Any]]] = {}  # (uid, status) as last written
_posted: dict[str, set[Problem]] = {}  # by uid: the problems already posted as Events
_refused: dict[str, float] = {}  # namespace -> when a write was refused because it is being deleted or gone
_leaving: set[str] = set()  # namespaces seen being deleted or deleted: nothing is rendered there
_minted: dict[tuple[str, str], tuple[str, str, str]] = {}  # (namespace, ClientKey): (uid, rotation, key) written,
# until the generated-key index has it; dropped when someone else changes or deletes that Secret
_usage: dict[str, tuple[dict[str, usage.Usage], frozenset[str]]] = {}  # namespace: usage read, expired keys
_shared: dict[str, Any] = {}  # "redis": the client for usage reads (absent without redis.url), "task": the loop


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Our own prefixes for kopf's bookkeeping, and API clients from the kubeconfig or the pod's account."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()  # no change handlers: no essence to keep
    # kopf keeps a task per object this long after its last event: 3,400 of them ending together 5 s after a
    # restart's listing (kopf's default) kept the operator busy past its work; 1 s ends them within it.
    settings.queueing.idle_timeout = 1.0
    settings.scanning.disabled = NAMESPACED  # a Role cannot list namespaces or CRDs: do not retry that for ever
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    _clients["core"] = client.CoreV1Api()
    _clients["custom"] = client.CustomObjectsApi()
    # The API calls run in threads (the client blocks), one reconcile's after another's: enough of them to keep
    # an API server busy while each waits for its answer (asyncio's default is 6 on 2 cores).
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(API_THREADS, thread_name_prefix="kube-api"))
    redis = usage.connect()
    if redis is not None:
        _shared["redis"] = redis
    _shared["task"] = asyncio.get_running_loop().create_task(_watch_usage(usage.interval()), name="clientkey usage")


def _plain(value: Any) -> Any:
    """A detached copy of a kopf body view, safe to keep in an index."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _indexed(body: kopf.Body, meta: kopf.Meta, namespace: str | None) -> dict[str, Any]:
    if meta.get("deletionTimestamp") or namespace is None:
        return {}  # a resource on its way out no longer renders
    return {namespace: _plain(body)}


@kopf.index(GROUP, VERSION, ROUTES)
async def route_index(body: kopf.Body, meta: kopf.Meta, namespace: str | None, **_: Any) -> dict[str, Any]:
    return _indexed(body, meta, namespace)


@kopf.index(GROUP, VERSION, CREDENTIALS)
async def credential_index(body: kopf.Body, meta: kopf.Meta, namespace: str | None, **_: Any) -> dict[str, Any]:
    return _indexed(body, meta, namespace)


@kopf.index(GROUP, VERSION, CLIENTKEYS)
async def clientkey_index(body: kopf.Body, meta: kopf.Meta, namespace: str | None, **_: Any) -> dict[str, Any]:
    return _indexed(body, meta, namespace)


@kopf.index("", "v1", "secrets", labels={CLIENT_KEY_LABEL: kopf.PRESENT})
async def generated_key_index(body: kopf.Body, meta: kopf.Meta, namespace: str | None, **_: Any) -> dict[str, Any]:
    """The keys the operator generated: (ClientKey name, owner uids, the rotation it answers, the key)."""
    if namespace is None or meta.get("deletionTimestamp"):
        return {}
    owners = tuple(str(o.get("uid")) for o in meta.get("ownerReferences") or [])
    rotation = (meta.get("annotations") or {}).get(ROTATED_FOR, "")
    found = client_keys({k: v for k, v in (body.get("data") or {}).items() if k == "api-key"})
    return {namespace: (meta["labels"][CLIENT_KEY_LABEL], owners, rotation, found[0] if found else "")}


@kopf.index("", "v1", "secrets", labels={CLIENT_KEYS_LABEL: kopf.PRESENT})
async def client_key_index(body: kopf.Body, labels: kopf.Labels, namespace: str | None, **_: Any) -> dict[str, Any]:
    return {namespace: (labels[CLIENT_KEYS_LABEL], client_keys(body.get("data")))} if namespace else {}


def _rendered(kind: str, body: kopf.Body, namespace: str | None) -> dict[str, Any]:
    """A rendered object as it is: its actual content's digest (a hand edit shows), owners and gateway."""
    if namespace is None:
        return {}
    meta = body["metadata"]
    owners = tuple(sorted(str(o.get("uid")) for o in meta.get("ownerReferences") or []))
    gateway = (meta.get("labels") or {}).get(GATEWAY_LABEL)
    return {namespace: (kind, meta["name"], gateway, content_digest(body), owners)}


@kopf.index("", "v1", "configmaps", labels=MANAGED_BY)
async def rendered_config_index(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, Any]:
    return _rendered(CONFIG_MAP, body, namespace)


@kopf.index("", "v1", "secrets", labels=MANAGED_BY)
async def rendered_secret_index(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, Any]:
    return _rendered(SECRET, body, namespace)


if not NAMESPACED:  # a Role cannot watch namespaces; there a refused write says the namespace is going

    @kopf.on.event("", "v1", "namespaces")
    async def namespace_changed(name: str, meta: kopf.Meta, type: str | None, **kwargs: Any) -> None:
        """Remember a namespace once it is being deleted, and after it is gone: the events of its objects'
        deletion come after the namespace's own on other watches, and must not render it again."""
        _remember(kwargs)
        if type == "DELETED" or meta.get("deletionTimestamp"):
            _leaving.add(name)
        else:  # created (again), or listed alive
            _leaving.discard(name)


def _terminating(namespace: str) -> bool:
    if namespace in _leaving:
        return True
    return time.monotonic() - _refused.get(namespace, -REFUSED_SECONDS) < REFUSED_SECONDS


def _referenced_secrets(credentials: list[Mapping[str, Any]], clientkeys: list[Mapping[str, Any]]) -> set[str]:
    names = {str(k["spec"]["secretRef"].get("name")) for k in clientkeys if k.get("spec", {}).get("secretRef")}
    for credential in credentials:
        spec = credential.get("spec", {})
        names.update(str(k.get("secretKeyRef", {}).get("name")) for k in spec.get("apiKeys") or [])
        if spec.get("tokenSecretRef"):
            names.add(str(spec["tokenSecretRef"].get("name")))
    return names


def _wrote(key: Key, version: str | None) -> None:
    if version is not None:
        _ours.setdefault(key, collections.deque(maxlen=16)).append(version)


def _is_ours(key: Key, meta: Mapping[str, Any]) -> bool:
    return meta.get("resourceVersion") in _ours.get(key, ())


async def reconcile(namespace: str) -> None:
    """Render the namespace and make the cluster match: objects that differ, then statuses and Events."""
    if _terminating(namespace):
        return
    try:
        await _reconcile(namespace)
    except ApiException as error:
        if not namespace_gone(error):
            raise
        _refused[namespace] = time.monotonic()


async def _reconcile(namespace: str) -> None:
    routes = list(_indexes["route_index"].get(namespace, []))
    credentials = list(_indexes["credential_index"].get(namespace, []))
    keys: dict[str, list[str]] = {}
    for gateway, found in _indexes["client_key_index"].get(namespace, []):
        keys[gateway] = sorted({*keys.get(gateway, []), *found})
    observed: dict[Key, tuple[str, tuple[str, ...]]] = {}
    gateways: set[str] = set()
    for index in ("rendered_config_index", "rendered_secret_index"):
        for kind, name, gateway, digest, owners in _indexes[index].get(namespace, []):
            observed[(kind, namespace, name)] = (digest, owners)
            gateways.update([gateway] if gateway else [])
    core, custom = _clients["core"], _clients["custom"]
    clientkeys = list(_indexes["clientkey_index"].get(namespace, []))
    referenced = _referenced_secrets(credentials, clientkeys)
    secrets, consent = await asyncio.to_thread(read_secrets, core, namespace, referenced)
    if _terminating(namespace):  # it began to go while its Secrets were read (they may be gone already)
        return
    generated = await _generated_keys(namespace, clientkeys)
    clients = render_client_keys(namespace, clientkeys, secrets, consent, generated, keys)
    rendering = render(routes, credentials, secrets, keys, consent, keep=gateways, clients=clients)
    uids = {r["metadata"]["name"]: r["metadata"]["uid"] for r in routes}
    for gateway in rendering.gateways.values():
        owners = [
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ProviderRoute", "name": name, "uid": uids[name],
             "controller": False, "blockOwnerDeletion": False}
            for name in gateway.routes
        ]  # fmt: skip
        wanted_owners = tuple(sorted(o["uid"] for o in owners))
        for kind, body in rendered_objects(gateway, namespace, owners):
            key: Key = (kind, namespace, body["metadata"]["name"])
            wanted = (body["metadata"]["annotations"][DIGEST], wanted_owners)
            have = _known.get(key) or observed.get(key)
            if have != wanted:
                _wrote(key, await asyncio.to_thread(write, core, kind, body, have is not None))
                log.info(f"{kind} {key[2]} written for gateway {gateway.name!r} ({len(gateway.routes)} routes)")
            _known[key] = wanted
    for route in routes:
        state = rendering.routes[route["metadata"]["name"]]
        ok, reason, message = summary(state.problems, "Rendered", f"serving {len(state.models)} model ids")
        clean, why, warned = summary(state.warnings + state.notices, "NoWarnings", "no model conflict, keys set")
        await _report(custom, namespace, ROUTES, route, state.problems + state.warnings, {
            "models": state.models, "modelCount": len(state.models), "gateway": state.gateway,
        }, ("Ready", ok, reason, message), ("Rendered", state.rendered, reason, message),
           ("Degraded", not clean, why, warned))  # fmt: skip
    for credential in credentials:
        cstate = rendering.credentials[credential["metadata"]["name"]]
        ok, reason, message = summary(cstate.problems, "SecretsResolved", f"{cstate.usable_keys} usable keys")
        await _report(custom, namespace, CREDENTIALS, credential, cstate.problems, {
            "usableKeys": cstate.usable_keys,
        }, ("Ready", cstate.usable_keys > 0, reason, message), ("SecretsResolved", ok, reason, message))  # fmt: skip
    now = datetime.now(UTC)
    read, _ = _usage.get(namespace, ({}, frozenset()))
    for clientkey in clientkeys:
        name = clientkey["metadata"]["name"]
        problems, fields, expected = status_of(clientkey, rendering.clients[name], now, read.get(name),
                                               "redis" in _shared)  # fmt: skip
        await _report(custom, namespace, CLIENTKEYS, clientkey, problems, fields, *expected)


async def _generated_keys(namespace: str, clientkeys: list[Mapping[str, Any]]) -> dict[str, str | Problem]:
    """The key of each ClientKey without a secretRef: the one it has, or a new one when it has none yet, its
    Secret was deleted, or its cliproxy.io/rotate annotation asks for another."""
    indexed = {name: (owners, rotation, key) for name, owners, rotation, key in
               _indexes["generated_key_index"].get(namespace, [])}  # fmt: skip
    found: dict[str, str | Problem] = {}
    for clientkey in clientkeys:
        meta = clientkey["metadata"]
        if clientkey.get("spec", {}).get("secretRef"):
            continue
        name, uid = meta["name"], meta["uid"]
        rotation = (meta.get("annotations") or {}).get(ROTATE_ANNOTATION, "")
        have = indexed.get(name)
        minted = _minted.get((namespace, name))
        if minted is not None and minted[:2] == (uid, rotation):
            found[name] = minted[2]
            continue
        if have is not None and uid in have[0] and have[1] == rotation and have[2]:
            found[name] = have[2]
            continue
        key = KEY_PREFIX + token_urlsafe(32)
        body = generated_key_secret(namespace, clientkey, key, rotation)
        version = await asyncio.to_thread(write_generated, _clients["core"], body, have is not None)
        if version is None:
            found[name] = Problem("SecretNameTaken", f"Secret {body['metadata']['name']!r} cannot be created: "
                                  "another Secret has that name (or it is too long); rename the ClientKey or "
                                  "that Secret, or set spec.secretRef")  # fmt: skip
            continue
        _wrote((SECRET, namespace, body["metadata"]["name"]), version)
        _minted[(namespace, name)] = (uid, rotation, key)
        log.info(f"client key generated for ClientKey {name!r} in {namespace} (Secret {body['metadata']['name']})")
        found[name] = key
    return found


async def _watch_usage(every: float) -> None:
    """Every ``every`` seconds, each namespace's ClientKey usage (one Redis round trip) and expiries: a change
    re-reconciles the namespace, which writes the statuses that differ."""
    failing = False
    while True:
        for namespace in list(_indexes.get("clientkey_index", {})):
            if _terminating(namespace):
                continue
            clientkeys = list(_indexes["clientkey_index"].get(namespace, []))
            now = datetime.now(UTC)
            read: dict[str, usage.Usage] | None = _usage.get(namespace, ({}, frozenset()))[0]
            if "redis" in _shared:
                read = await usage.observe(_shared["redis"], namespace, clientkeys, now)
                if (read is None) != failing:
                    failing = not failing
                    log.warning("ClientKey usage: Redis " + ("unreachable; statuses keep the last usage read"
                                                             if failing else "reachable again"))  # fmt: skip
            if read is None:
                continue
            facts = (read, frozenset(k["metadata"]["name"] for k in clientkeys if expired(k, now)))
            if facts != _usage.get(namespace):
                _usage[namespace] = facts
                _poke(namespace)
        await asyncio.sleep(every)


async def _report(custom: client.CustomObjectsApi, namespace: str, plural: str, resource: Mapping[str, Any],
                  problems: list[Problem], fields: dict[str, Any], *wanted: Wanted) -> None:  # fmt: skip
    """Patch the status when it differs from the one last written, and post an Event for each new problem."""
    meta = resource["metadata"]
    key: Key = (plural, namespace, meta["name"])
    written = _statuses.get(key)
    previous = written[1] if written and written[0] == meta["uid"] else dict(resource.get("status") or {})
    generation = meta.get("generation")
    wanted_status = {"conditions": conditions(previous, generation, *wanted), **fields,
                     "observedGeneration": generation}  # fmt: skip
    if not unchanged(previous, wanted_status):
        _wrote(key, await asyncio.to_thread(patch_status, custom, namespace, plural, meta["name"], wanted_status))
        _statuses[key] = (meta["uid"], {**previous, **wanted_status})
    posted = _posted.setdefault(meta["uid"], set())
    for problem in new_problems(problems, previous, posted):
        await asyncio.to_thread(post_event, _clients["core"], resource, problem.reason, problem.message)
    posted.intersection_update(problems)  # a problem that went away is posted again if it comes back
    posted.update(problems)


_coalescer = Coalescer(reconcile)


def _remember(kwargs: Mapping[str, Any]) -> None:
    """kopf hands indexes to handlers only: keep them for the coalesced reconcile."""
    for name in ("route_index", "credential_index", "client_key_index", "rendered_config_index",
                 "rendered_secret_index", "clientkey_index", "generated_key_index"):  # fmt: skip
        if name in kwargs:
            _indexes[name] = kwargs[name]


def _poke(namespace: str) -> None:
    if not _terminating(namespace):
        _coalescer.poke(namespace)


@kopf.on.event(GROUP, VERSION, ROUTES)
@kopf.on.event(GROUP, VERSION, CREDENTIALS)
@kopf.on.event(GROUP, VERSION, CLIENTKEYS)
async def resource_changed(resource: kopf.Resource, namespace: str | None, meta: kopf.Meta, **kwargs: Any) -> None:
    _remember(kwargs)
    if namespace is not None and not _is_ours((resource.plural, namespace, meta["name"]), meta):
        _poke(namespace)


@kopf.on.event("", "v1", "secrets")
async def secret_changed(namespace: str | None, name: str, labels: kopf.Labels, meta: kopf.Meta,
                         **kwargs: Any) -> None:  # fmt: skip
    """A rotated key (provider or client) re-renders; a rendered Secret changed by someone else is put back."""
    _remember(kwargs)
    if namespace is None:
        return
    if all(labels.get(k) == v for k, v in MANAGED_BY.items()):
        _rendered_changed((SECRET, namespace, name), meta)
        return
    if CLIENT_KEY_LABEL in labels:  # a generated key: someone else's change (a deletion) is the truth now
        if kwargs.get("type") == "DELETED" or not _is_ours((SECRET, namespace, name), meta):
            _minted.pop((namespace, labels[CLIENT_KEY_LABEL]), None)
            _poke(namespace)
        return
    credentials = list(_indexes["credential_index"].get(namespace, []))
    clientkeys = list(_indexes["clientkey_index"].get(namespace, []))
    if CLIENT_KEYS_LABEL in labels or name in _referenced_secrets(credentials, clientkeys):
        _poke(namespace)


@kopf.on.event("", "v1", "configmaps", labels=MANAGED_BY)
async def rendered_config_changed(namespace: str | None, name: str, meta: kopf.Meta, **kwargs: Any) -> None:
    """Drift repair: a rendered ConfigMap edited or deleted by hand is rendered again."""
    _remember(kwargs)
    if namespace is not None:
        _rendered_changed((CONFIG_MAP, namespace, name), meta)


def _rendered_changed(key: Key, meta: Mapping[str, Any]) -> None:
    if not _is_ours(key, meta):
        _known.pop(key, None)  # the index now holds what is there
        _poke(key[1])


@kopf.on.cleanup()
async def stop_reconciling(**_: Any) -> None:
    task = _shared.pop("task", None)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    redis = _shared.pop("redis", None)
    if redis is not None:
        await redis.aclose()
    await _coalescer.close()


def _holds_token(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("tokenSecretRef"))


@kopf.timer(GROUP, VERSION, CREDENTIALS, interval=tokens.CHECK_SECONDS, when=_holds_token)
async def keep_token_fresh(
    spec: kopf.Spec, status: kopf.Status, namespace: str | None, name: str, body: kopf.Body, logger: kopf.Logger,
    **_: Any,
) -> None:  # fmt: skip
    """The single refresher of this credential's token (proxies render with ``token-refresh: false``)."""
    if namespace is None or _terminating(namespace):
        return
    report = {"message": None, **await tokens.check(_clients["core"], namespace, _plain(spec))}
    previous = dict(status.get("token") or {})
    if report["state"] == "refreshed":
        logger.info(f"token refreshed; it expires at {report.get('expiresAt', 'an unknown time')}")
        report["state"] = "valid"
    elif report["state"] in ("failing", "rejected") and report["message"] != previous.get("message"):
        reason = "TokenRefreshRejected" if report["state"] == "rejected" else "TokenRefreshFailed"
        await asyncio.to_thread(post_event, _clients["core"], _plain(body), reason, str(report["message"]))
    if any(previous.get(k) != v for k, v in report.items()):
        version = await asyncio.to_thread(
            patch_status, _clients["custom"], namespace, CREDENTIALS, name, {"token": report}
        )
        _wrote((CREDENTIALS, namespace, name), version)
