"""The operator's writes to the Kubernetes API: rendered ConfigMaps and Secrets, statuses, and clean-up.

Everything here is blocking (the official ``kubernetes`` client); the handlers run it in a thread.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .render import Gateway, SecretConsent
from .secret_rules import REFRESH_URL_ANNOTATION, opted_in

GROUP, VERSION = "cliproxy.io", "v1alpha1"
MANAGED_BY = {"app.kubernetes.io/managed-by": "cliproxy-operator"}
GATEWAY_LABEL = "cliproxy.io/gateway"
DIGEST = "cliproxy.io/digest"
CLIENT_KEYS_LABEL = "cliproxy.io/client-keys-for"  # on a user's Secret: its values are that gateway's client keys


def _body(document: dict[str, Any]) -> Any:
    """A request body as a plain dict: the client serialises dicts as readily as its generated models."""
    return document


def object_name(gateway: str) -> str:
    return f"cliproxy-{gateway}"


def read_secrets(
    core: client.CoreV1Api, namespace: str, names: Iterable[str]
) -> tuple[dict[str, dict[str, str]], SecretConsent]:
    """The decoded data of each named Secret that exists and opted in, and what their owners allowed.

    A Secret without the opt-in label is named in the consent, and its data never leaves this function;
    absent ones are left out (render names them).
    """
    found, refused, refresh_urls = {}, set(), {}
    for name in sorted(set(names)):
        try:
            secret = core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                continue
            raise
        metadata = secret.metadata
        if not opted_in(metadata.labels if metadata else None):
            refused.add(name)
            continue
        allowed = ((metadata.annotations if metadata else None) or {}).get(REFRESH_URL_ANNOTATION)
        if allowed is not None:
            refresh_urls[name] = allowed
        data = secret.data or {}
        found[name] = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in data.items()}
    return found, SecretConsent(frozenset(refused), refresh_urls)


def read_client_keys(core: client.CoreV1Api, namespace: str) -> dict[str, list[str]]:
    """Each gateway's client keys: every line of every value of the Secrets labelled for it, sorted."""
    keys: dict[str, set[str]] = {}
    for secret in core.list_namespaced_secret(namespace, label_selector=CLIENT_KEYS_LABEL).items:
        gateway = ((secret.metadata.labels if secret.metadata else None) or {}).get(CLIENT_KEYS_LABEL)
        if not gateway:
            continue
        found = keys.setdefault(gateway, set())
        for value in (secret.data or {}).values():
            text = base64.b64decode(value).decode("utf-8", "replace")
            found.update(line.strip() for line in text.splitlines() if line.strip())
    return {gateway: sorted(found) for gateway, found in keys.items() if found}


def _metadata(gateway: Gateway, namespace: str, owners: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": object_name(gateway.name),
        "namespace": namespace,
        "labels": {**MANAGED_BY, GATEWAY_LABEL: gateway.name},
        "annotations": {DIGEST: gateway.digest},
        "ownerReferences": owners,
    }


def _owners_of(obj: Any) -> list[tuple[str, str]]:
    return sorted((o.uid, o.name) for o in (obj.metadata.owner_references or []))


def apply_gateway(core: client.CoreV1Api, namespace: str, gateway: Gateway, owners: list[dict[str, Any]]) -> bool:
    """Make the gateway's ConfigMap and Secret match the rendering; True when anything was written.

    The comparison is with the objects' actual data, not only their digest annotation, so a hand edit
    (drift) is put back, while unchanged input writes nothing.
    """
    metadata = _metadata(gateway, namespace, owners)
    secret_data = {k: base64.b64encode(v.encode()).decode() for k, v in gateway.secret_data.items()}
    # The Secret first: a proxy that sees a ConfigMap naming files its Secret does not hold yet refuses it.
    wrote_secret = _ensure(core, "secret", {"metadata": metadata, "type": "Opaque", "data": secret_data})
    wrote_config = _ensure(core, "config_map", {"metadata": metadata, **gateway.config_payload})
    return wrote_secret or wrote_config


def _ensure(core: client.CoreV1Api, kind: str, body: dict[str, Any]) -> bool:
    """Create or replace one object (``kind`` names the client's methods) unless it already matches ``body``."""
    metadata = body["metadata"]
    name, namespace = metadata["name"], metadata["namespace"]
    try:
        current = getattr(core, f"read_namespaced_{kind}")(name, namespace)
    except ApiException as error:
        if error.status != 404:
            raise
        getattr(core, f"create_namespaced_{kind}")(namespace, _body(body))
        return True
    wanted_owners = sorted((o["uid"], o["name"]) for o in metadata["ownerReferences"])
    if (
        (current.data or {}) == body.get("data", {})
        and (getattr(current, "binary_data", None) or {}) == body.get("binaryData", {})
        and _annotation(current) == metadata["annotations"][DIGEST]
        and _owners_of(current) == wanted_owners
    ):
        return False
    getattr(core, f"replace_namespaced_{kind}")(name, namespace, _body(body))
    return True


def _annotation(obj: Any) -> str | None:
    return (obj.metadata.annotations or {}).get(DIGEST)


def remove_stale(core: client.CoreV1Api, namespace: str, keep: Iterable[str]) -> list[str]:
    """Delete rendered objects of gateways not in ``keep`` (no route left); returns their names."""
    keep_names = {object_name(g) for g in keep}
    selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
    removed = []
    for kind in ("config_map", "secret"):
        listed = getattr(core, f"list_namespaced_{kind}")(namespace, label_selector=selector)
        for item in listed.items:
            labels = item.metadata.labels or {}
            if not all(labels.get(k) == v for k, v in MANAGED_BY.items()):  # an API that ignored the selector
                continue
            if item.metadata.name not in keep_names:
                try:
                    getattr(core, f"delete_namespaced_{kind}")(item.metadata.name, namespace)
                except ApiException as error:
                    if error.status != 404:
                        raise
                removed.append(f"{kind}/{item.metadata.name}")
    return removed


def patch_status(
    custom: client.CustomObjectsApi, namespace: str, plural: str, name: str, status: Mapping[str, Any]
) -> None:
    try:
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, {"status": dict(status)})
    except ApiException as error:
        if error.status != 404:  # deleted meanwhile: nothing to report on
            raise
