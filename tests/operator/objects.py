"""Helpers of the operator tests: the resources a user applies, readers of what the operator makes of them,
and a proxy served from the API. Test modules import these from here, never from another test module.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from cliproxy_operator.render import CONFIG_KEY
from cliproxy_operator.secret_rules import OPT_IN_LABEL
from cliproxy_proxy.__main__ import load_app
from cliproxy_proxy.kubesource import KubeSource
from cliproxy_proxy.loader import ConfigSource
from cliproxy_proxy.runtime import build_runtime

from ..fakes.kiro import KiroVendor
from .kube import CONFIGMAPS, CREDENTIALS, ROUTES, SECRETS, Cluster, OperatorRunner, b64, wait_for

Serve = Callable[[web.Application], Awaitable[TestServer]]

MANAGED = {"app.kubernetes.io/managed-by": "cliproxy-operator"}
RENDERED = "cliproxy-default"  # the default gateway's ConfigMap and Secret
WITHIN = 10.0  # seconds the operator gets to react; it normally takes well under one


# ---------------------------------------------------------------------------------------------------------------
# Builders and readers


def secret(name: str, *, opted_in: bool = True, **data: str) -> dict[str, Any]:
    metadata = {"name": name, "labels": {OPT_IN_LABEL: "true"} if opted_in else {}}
    return {"metadata": metadata, "type": "Opaque", "data": {k: b64(v) for k, v in data.items()}}


def credential(name: str, provider: str, *keys: str, secret_name: str = "llm-keys", **spec: Any) -> dict[str, Any]:
    refs = [{"secretKeyRef": {"name": secret_name, "key": key}} for key in keys]
    return {"metadata": {"name": name}, "spec": {"provider": provider, "apiKeys": refs, **spec}}


def route(name: str, *credentials: str, models: tuple[str | tuple[str, str], ...] = (), **spec: Any) -> dict[str, Any]:
    listed = [{"name": m} if isinstance(m, str) else {"name": m[0], "alias": m[1]} for m in models]
    body = {"credentials": [{"name": c} for c in credentials], **({"models": listed} if listed else {}), **spec}
    return {"metadata": {"name": name}, "spec": body}


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def config_of(configmap: dict[str, Any]) -> dict[str, Any]:
    document = yaml.safe_load(configmap["data"][CONFIG_KEY])  # JSON or YAML: YAML reads both
    assert isinstance(document, dict)
    return document


def named_files(document: Any) -> set[str]:
    """Every secret file the proxy config names (``api-key-file``, ``token-file``, ``api-keys-file``...)."""
    found: set[str] = set()
    if isinstance(document, dict):
        for key, value in document.items():
            if key.endswith("-file") and isinstance(value, str):
                found.add(value)
            else:
                found |= named_files(value)
    elif isinstance(document, list):
        for item in document:
            found |= named_files(item)
    return found


def served_models(document: dict[str, Any]) -> set[str]:
    """The upstream model names listed anywhere in the rendered config."""
    names: set[str] = set()
    for value in document.values():
        for entry in value if isinstance(value, list) else []:
            if isinstance(entry, dict):
                names |= {m["name"] for m in entry.get("models") or [] if isinstance(m, dict)}
    return names


async def wait_condition(
    cluster: Cluster, operator: OperatorRunner, resource: str, name: str, kind: str, status: str,
    reason: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Wait until the object's condition ``kind`` has ``status`` (and ``reason``); return the object."""
    seen: dict[str, Any] = {}

    async def reached() -> dict[str, Any] | None:
        nonlocal seen
        obj = await cluster.get(resource, name)
        seen = condition(obj, kind)
        ok = seen.get("status") == status and (reason is None or seen.get("reason") == reason)
        return obj if ok else None

    return await wait_for(  # type: ignore[no-any-return]
        reached, WITHIN, message=lambda: f"{name}: {kind} is {seen}, not {status}/{reason}\n{operator.describe()}"
    )


async def rendered_objects(cluster: Cluster, operator: OperatorRunner) -> tuple[dict[str, Any], dict[str, Any]]:
    async def both() -> tuple[dict[str, Any], dict[str, Any]] | None:
        configmap, rendered_secret = await cluster.get(CONFIGMAPS, RENDERED), await cluster.get(SECRETS, RENDERED)
        return (configmap, rendered_secret) if configmap and rendered_secret else None

    return await wait_for(both, WITHIN, message=lambda: f"no {RENDERED} ConfigMap and Secret\n{operator.describe()}")  # type: ignore[no-any-return]


async def wait_gone(cluster: Cluster, operator: OperatorRunner, resource: str, name: str) -> None:
    async def gone() -> bool:
        return await cluster.get(resource, name) is None

    await wait_for(gone, WITHIN, message=lambda: f"{resource} {name} still exists\n{operator.describe()}")


async def basic_setup(cluster: Cluster, operator: OperatorRunner) -> tuple[dict[str, Any], dict[str, Any]]:
    """One Secret with two OpenRouter keys, a credential over both, a route exposing two models."""
    await cluster.create(SECRETS, secret("llm-keys", **{"openrouter-a": "sk-or-AAA", "openrouter-b": "sk-or-BBB"}))
    await cluster.create(
        CREDENTIALS,
        credential("openrouter", "openrouter", "openrouter-a", "openrouter-b", baseURL="https://openrouter.ai/api/v1"),
    )
    await cluster.create(
        ROUTES, route("team-a", "openrouter", models=(("openai/gpt-4o", "gpt"), "anthropic/claude-3.5-sonnet"))
    )
    await wait_condition(cluster, operator, ROUTES, "team-a", "Ready", "True")
    return await rendered_objects(cluster, operator)


@contextlib.asynccontextmanager
async def proxy_for(serve: Serve, source: KubeSource) -> AsyncIterator[tuple[web.Application, str]]:
    app = load_app(source, reload_interval=0.05)
    server = await serve(app)
    yield app, str(server.make_url("")).rstrip("/")


def ide_file(vendor: KiroVendor, ttl: float) -> str:
    access, refresh = vendor.issue(ttl)
    expires = datetime.datetime.fromtimestamp(vendor.access[access], datetime.UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"accessToken": access, "refreshToken": refresh, "expiresAt": expires, "authMethod": "social",
                       "provider": "Github", "profileArn": vendor.profile_arn, "region": "us-east-1"})  # fmt: skip


async def warning(cluster: Cluster, operator: OperatorRunner, name: str, reason: str) -> dict[str, Any]:
    async def posted() -> list[dict[str, Any]]:
        return [e for e in await cluster.events(name) if e.get("reason") == reason and e.get("type") == "Warning"]

    found = await wait_for(posted, WITHIN, message=lambda: f"no {reason} Event on {name}\n{operator.describe()}")
    return dict(found[0])


def load(gateway: Any, tmp_path: Path) -> Any:
    """Mount the rendered objects as the proxy would see them, and build its runtime from them."""
    config_dir, secrets_dir = tmp_path / "config", tmp_path / "secrets"
    config_dir.mkdir()
    secrets_dir.mkdir()
    (config_dir / CONFIG_KEY).write_text(gateway.config_text)
    for name, value in gateway.secret_data.items():
        (secrets_dir / name).write_text(value)
    source = ConfigSource(config_dir, secrets_dir)
    config, _ = source.read_config()
    return build_runtime(config, source)
