"""The operator's requests to the Kubernetes API: rendered ConfigMaps and Secrets, statuses, Events.

Everything here is blocking (the official ``kubernetes`` client); the handlers run it in a thread. Every write
names the field manager, and returns the resourceVersion it produced so that the watch event it causes can be
recognised as the operator's own and ignored. Responses are not turned into client models (a rendered
ConfigMap can approach 1 MiB): only their resourceVersion is read.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .clientkeys import GENERATED_KEY, generated_secret_name
from .render import Gateway, SecretConsent
from .secret_rules import REFRESH_URL_ANNOTATION, opted_in
from .status import now

GROUP, VERSION = "cliproxy.io", "v1alpha1"
FIELD_MANAGER = "cliproxy-operator"
MANAGED_BY = {"app.kubernetes.io/managed-by": "cliproxy-operator"}
GATEWAY_LABEL = "cliproxy.io/gateway"
DIGEST = "cliproxy.io/digest"  # of the object's own content: the ConfigMap and Secret change independently
CLIENT_KEYS_LABEL = "cliproxy.io/client-keys-for"  # on a user's Secret: its values are that gateway's client keys
CLIENT_KEY_LABEL = "cliproxy.io/client-key"  # on a Secret the operator generated: the ClientKey whose key it holds
ROTATED_FOR = "cliproxy.io/rotated-for"  # on that Secret: the ClientKey's cliproxy.io/rotate value it answers
CONFIG_MAP, SECRET = "config_map", "secret"  # the client's method infixes
NAMESPACES_ENV = "CLIPROXY_OPERATOR_NAMESPACES"  # set by the entry point in namespaced mode, read by the handlers


def object_name(gateway: str) -> str:
    return f"cliproxy-{gateway}"


def content_digest(obj: Mapping[str, Any]) -> str:
    """What a rendered object holds, hashed: ``data`` and ``binaryData`` as stored (base64 for a Secret)."""
    content = {"data": obj.get("data") or {}, "binaryData": obj.get("binaryData") or {}}
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


def client_keys(data: Mapping[str, str] | None) -> list[str]:
    """Every non-blank line of every value of a client-keys Secret's (base64) data."""
    found: set[str] = set()
    for value in (data or {}).values():
        text = base64.b64decode(value).decode("utf-8", "replace")
        found.update(line.strip() for line in text.splitlines() if line.strip())
    return sorted(found)


def rendered_objects(
    gateway: Gateway, namespace: str, owners: list[dict[str, Any]]
) -> list[tuple[str, dict[str, Any]]]:
    """The gateway's Secret and ConfigMap, in that order: a proxy seeing a ConfigMap that names files its Secret
    does not hold yet waits for them."""
    secret_data = {k: base64.b64encode(v.encode()).decode() for k, v in gateway.secret_data.items()}
    bodies: list[tuple[str, dict[str, Any]]] = [
        (SECRET, {"type": "Opaque", "data": secret_data}),
        (CONFIG_MAP, dict(gateway.config_payload)),
    ]
    for _, body in bodies:
        body["metadata"] = {
            "name": object_name(gateway.name), "namespace": namespace,
            "labels": {**MANAGED_BY, GATEWAY_LABEL: gateway.name},
            "annotations": {DIGEST: content_digest(body)}, "ownerReferences": owners,
        }  # fmt: skip
    return bodies


def _version(response: Any) -> str:
    return str(json.loads(response.data)["metadata"]["resourceVersion"])


def write(core: client.CoreV1Api, kind: str, body: dict[str, Any], exists: bool) -> str:
    """Create or replace one rendered object; returns the resourceVersion it now has."""
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    options = {"field_manager": FIELD_MANAGER, "_preload_content": False}
    for attempt in (exists, not exists):
        try:
            if attempt:
                return _version(getattr(core, f"replace_namespaced_{kind}")(name, namespace, body, **options))
            return _version(getattr(core, f"create_namespaced_{kind}")(namespace, body, **options))
        except ApiException as error:  # deleted or created meanwhile: the other verb, once
            if error.status != (404 if attempt else 409) or attempt != exists or namespace_gone(error):
                raise
    raise AssertionError("unreachable")


def generated_key_secret(namespace: str, clientkey: Mapping[str, Any], key: str, rotation: str) -> dict[str, Any]:
    """The Secret holding a generated client key, owned by its ClientKey (deleted with it, by the garbage
    collector: no finalizer)."""
    meta = clientkey["metadata"]
    owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClientKey", "name": meta["name"], "uid": meta["uid"],
             "controller": True, "blockOwnerDeletion": False}  # fmt: skip
    return {
        "type": "Opaque", "data": {GENERATED_KEY: base64.b64encode(key.encode()).decode()},
        "metadata": {"name": generated_secret_name(meta["name"]), "namespace": namespace,
                     "labels": {CLIENT_KEY_LABEL: meta["name"]}, "annotations": {ROTATED_FOR: rotation},
                     "ownerReferences": [owner]},
    }  # fmt: skip


def write_generated(core: client.CoreV1Api, body: dict[str, Any], exists: bool) -> str | None:
    """Replace the generated Secret, or create it; None when it cannot be created under its name, above all when
    another Secret has it (never taken over: a ClientKey's author must not overwrite a Secret by naming their
    ClientKey after it)."""
    if exists:
        return write(core, SECRET, body, True)
    try:
        response = core.create_namespaced_secret(body["metadata"]["namespace"], body,  # type: ignore[arg-type]
                                                 field_manager=FIELD_MANAGER, _preload_content=False)  # fmt: skip
    except ApiException as error:
        if error.status in (409, 422):  # taken, or a name too long for a Secret
            return None
        raise
    return _version(response)


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
            response = core.read_namespaced_secret(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                continue
            raise
        secret = json.loads(response.data)  # type: ignore[arg-type]  # raw bytes when not preloaded
        metadata = secret.get("metadata") or {}
        if not opted_in(metadata.get("labels")):
            refused.add(name)
            continue
        allowed = (metadata.get("annotations") or {}).get(REFRESH_URL_ANNOTATION)
        if allowed is not None:
            refresh_urls[name] = allowed
        data = secret.get("data") or {}
        found[name] = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in data.items()}
    return found, SecretConsent(frozenset(refused), refresh_urls)


def patch_status(
    custom: client.CustomObjectsApi, namespace: str, plural: str, name: str, status: Mapping[str, Any]
) -> str | None:
    """Merge-patch the status subresource; the new resourceVersion, or None when the object is gone."""
    try:
        response = custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name, {"status": dict(status)},
            field_manager=FIELD_MANAGER, _preload_content=False,
        )  # fmt: skip
    except ApiException as error:
        if error.status != 404:  # deleted meanwhile: nothing to report on
            raise
        return None
    return _version(response)


def post_event(core: client.CoreV1Api, involved: Mapping[str, Any], reason: str, message: str) -> None:
    """One Warning Event about a resource (the message names Secrets and keys, never a value)."""
    meta = involved["metadata"]
    stamp = now()
    event: Any = {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                           "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
        "type": "Warning", "reason": reason, "message": message[:1024], "count": 1,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "source": {"component": FIELD_MANAGER},
        "reportingComponent": FIELD_MANAGER,
    }  # fmt: skip
    core.create_namespaced_event(meta["namespace"], event, field_manager=FIELD_MANAGER, _preload_content=False)


def namespace_gone(error: ApiException) -> bool:
    """A write refused because its namespace is being deleted (403 "... because it is being terminated") or is
    gone (404 naming the namespace, not the object)."""
    if error.status == 403:
        return "being terminated" in str(error.body or "")
    if error.status != 404:
        return False
    try:
        details = json.loads(error.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return False
    return bool(details.get("kind") == "namespaces")
