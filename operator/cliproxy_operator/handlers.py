"""kopf handlers: thin. Each one gathers its namespace's resources, calls ``render`` and applies the result.

Every trigger (either kind created, changed, resumed or deleted; a referenced Secret rotated; a rendered
object edited by hand) re-renders the whole namespace: the rendering is cheap and pure, and unchanged output
writes nothing, so there is no incremental state to get wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from kubernetes import client, config

from . import tokens
from .kube import (
    CLIENT_KEYS_LABEL,
    GROUP,
    MANAGED_BY,
    VERSION,
    apply_gateway,
    patch_status,
    read_client_keys,
    read_secrets,
    remove_stale,
)
from .render import Problem, render

ROUTES, CREDENTIALS = "providerroutes", "providercredentials"
_locks: dict[str, asyncio.Lock] = {}
_clients: dict[str, Any] = {}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Our own prefixes for kopf's bookkeeping, and API clients from the kubeconfig or the pod's account."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    _clients["core"] = client.CoreV1Api()
    _clients["custom"] = client.CustomObjectsApi()


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
def route_index(body: kopf.Body, meta: kopf.Meta, namespace: str | None, **_: Any) -> dict[str, Any]:
    return _indexed(body, meta, namespace)


@kopf.index(GROUP, VERSION, CREDENTIALS)
def credential_index(body: kopf.Body, meta: kopf.Meta, namespace: str | None, **_: Any) -> dict[str, Any]:
    return _indexed(body, meta, namespace)


def _referenced_secrets(credentials: list[Mapping[str, Any]]) -> set[str]:
    names: set[str] = set()
    for credential in credentials:
        spec = credential.get("spec", {})
        names.update(str(k.get("secretKeyRef", {}).get("name")) for k in spec.get("apiKeys") or [])
        if spec.get("tokenSecretRef"):
            names.add(str(spec["tokenSecretRef"].get("name")))
    return names


def _condition(kind: str, ok: bool, reason: str, message: str, previous: list[dict[str, Any]],
               generation: int | None) -> dict[str, Any]:  # fmt: skip
    status = "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == kind), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    stamp = since or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    condition = {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": stamp}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def _summary(problems: list[Problem], ok_reason: str, ok_message: str) -> tuple[bool, str, str]:
    if not problems:
        return True, ok_reason, ok_message
    return False, problems[0].reason, "; ".join(p.message for p in problems)


def _same(previous: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    return all(previous.get(k) == v for k, v in status.items())


async def reconcile(namespace: str, route_index: kopf.Index[str, Any], credential_index: kopf.Index[str, Any],
                    logger: kopf.Logger) -> None:  # fmt: skip
    """Render the namespace and make the cluster match: objects, then statuses and Events."""
    lock = _locks.setdefault(namespace, asyncio.Lock())
    async with lock:
        routes = list(route_index.get(namespace, []))
        credentials = list(credential_index.get(namespace, []))
        core, custom = _clients["core"], _clients["custom"]
        secrets, consent = await asyncio.to_thread(read_secrets, core, namespace, _referenced_secrets(credentials))
        client_keys = await asyncio.to_thread(read_client_keys, core, namespace)
        rendering = render(routes, credentials, secrets, client_keys, consent)
        by_name = {r["metadata"]["name"]: r for r in routes}
        for gateway in rendering.gateways.values():
            owners = [
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ProviderRoute", "name": name,
                 "uid": by_name[name]["metadata"]["uid"], "controller": False, "blockOwnerDeletion": False}
                for name in gateway.routes
            ]  # fmt: skip
            if await asyncio.to_thread(apply_gateway, core, namespace, gateway, owners):
                logger.info(f"gateway {gateway.name!r} rendered ({len(gateway.routes)} routes, {gateway.digest[:12]})")
        keep = set(rendering.gateways) | rendering.held  # a gateway that failed to render keeps its last objects
        removed = await asyncio.to_thread(remove_stale, core, namespace, keep)
        if removed:
            logger.info(f"removed {', '.join(removed)}: no renderable route left")
        for route in routes:
            state = rendering.routes[route["metadata"]["name"]]
            ok, reason, message = _summary(state.problems, "Rendered", f"serving {len(state.models)} model ids")
            clean, why, warned = _summary(state.warnings + state.notices, "NoWarnings", "no model conflict, keys set")
            await _report(custom, namespace, ROUTES, route, {
                "conditions": _conditions(route, ("Ready", ok, reason, message),
                                          ("Rendered", state.rendered, reason, message),
                                          ("Degraded", not clean, why, warned)),
                "models": state.models, "modelCount": len(state.models), "gateway": state.gateway,
            }, state.problems + state.warnings)  # fmt: skip
        for credential in credentials:
            cstate = rendering.credentials[credential["metadata"]["name"]]
            ok, reason, message = _summary(cstate.problems, "SecretsResolved", f"{cstate.usable_keys} usable keys")
            await _report(custom, namespace, CREDENTIALS, credential, {
                "conditions": _conditions(credential, ("Ready", cstate.usable_keys > 0, reason, message),
                                          ("SecretsResolved", ok, reason, message)),
                "usableKeys": cstate.usable_keys,
            }, cstate.problems)  # fmt: skip


def _conditions(resource: Mapping[str, Any], *wanted: tuple[str, bool, str, str]) -> list[dict[str, Any]]:
    previous = list(resource.get("status", {}).get("conditions") or [])
    generation = resource["metadata"].get("generation")
    return [_condition(kind, ok, reason, message, previous, generation) for kind, ok, reason, message in wanted]


async def _report(custom: client.CustomObjectsApi, namespace: str, plural: str, resource: Mapping[str, Any],
                  status: dict[str, Any], problems: list[Problem]) -> None:  # fmt: skip
    """Patch the status when it changed, and post an Event for each new problem."""
    status["observedGeneration"] = resource["metadata"].get("generation")
    previous = resource.get("status") or {}
    if _same(previous, status):
        return
    await asyncio.to_thread(patch_status, custom, namespace, plural, resource["metadata"]["name"], status)
    old_messages = {c.get("message") for c in previous.get("conditions") or []}
    for problem in problems:
        if problem.message not in " ".join(str(m) for m in old_messages):
            kopf.event(
                kopf.Body(cast(kopf.RawBody, dict(resource))),
                type="Warning",
                reason=problem.reason,
                message=problem.message,
            )


def _indexes(kwargs: Mapping[str, Any]) -> tuple[kopf.Index[str, Any], kopf.Index[str, Any]]:
    return kwargs["route_index"], kwargs["credential_index"]  # kopf injects indexes by function name


@kopf.on.create(GROUP, VERSION, ROUTES)
@kopf.on.update(GROUP, VERSION, ROUTES)
@kopf.on.resume(GROUP, VERSION, ROUTES)
@kopf.on.delete(GROUP, VERSION, ROUTES)
@kopf.on.create(GROUP, VERSION, CREDENTIALS)
@kopf.on.update(GROUP, VERSION, CREDENTIALS)
@kopf.on.resume(GROUP, VERSION, CREDENTIALS)
@kopf.on.delete(GROUP, VERSION, CREDENTIALS)
async def resource_changed(namespace: str | None, logger: kopf.Logger, **kwargs: Any) -> None:
    if namespace is not None:
        await reconcile(namespace, *_indexes(kwargs), logger)


@kopf.on.event("", "v1", "secrets")
async def secret_changed(
    namespace: str | None, name: str, labels: kopf.Labels, logger: kopf.Logger, **kwargs: Any
) -> None:
    """A rotated key (provider or client) re-renders at once; a hand-edited rendered Secret is put back."""
    routes, credentials = _indexes(kwargs)
    if namespace is None:
        return
    rendered = all(labels.get(k) == v for k, v in MANAGED_BY.items())
    if rendered or CLIENT_KEYS_LABEL in labels or name in _referenced_secrets(list(credentials.get(namespace, []))):
        await reconcile(namespace, routes, credentials, logger)


@kopf.on.event("", "v1", "configmaps", labels=MANAGED_BY)
async def rendered_config_changed(namespace: str | None, logger: kopf.Logger, **kwargs: Any) -> None:
    """Drift repair: a rendered ConfigMap edited or deleted by hand is rendered again."""
    if namespace is not None:
        await reconcile(namespace, *_indexes(kwargs), logger)


def _holds_token(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("tokenSecretRef"))


@kopf.timer(GROUP, VERSION, CREDENTIALS, interval=tokens.CHECK_SECONDS, when=_holds_token)
async def keep_token_fresh(
    spec: kopf.Spec, status: kopf.Status, namespace: str | None, body: kopf.Body, patch: kopf.Patch,
    logger: kopf.Logger, **_: Any,
) -> None:  # fmt: skip
    """The single refresher of this credential's token (proxies render with ``token-refresh: false``)."""
    if namespace is None:
        return
    report = {"message": None, **await tokens.check(_clients["core"], namespace, _plain(spec))}
    previous = dict(status.get("token") or {})
    if report["state"] == "refreshed":
        logger.info(f"token refreshed; it expires at {report.get('expiresAt', 'an unknown time')}")
        report["state"] = "valid"
    elif report["state"] in ("failing", "rejected") and report["message"] != previous.get("message"):
        reason = "TokenRefreshRejected" if report["state"] == "rejected" else "TokenRefreshFailed"
        kopf.event(body, type="Warning", reason=reason, message=str(report["message"]))
    if any(previous.get(k) != v for k, v in report.items()):
        patch.status["token"] = report
