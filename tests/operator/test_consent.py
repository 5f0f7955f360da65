"""A CR author gets no more than they hold, through the real handlers: the Secret opt-in, the refresh URL rule,
route capture and the keyless gateway staying closed.

The attacker may create ProviderCredentials and ProviderRoutes in the namespace but does not own the victim's
Secret; every refusal is a condition and a Warning Event, and the victim's key reaches no object the operator
writes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from cliproxy_operator.secret_rules import OPT_IN_LABEL, REFRESH_URL_ANNOTATION

from ..fakes.kiro import start_kiro
from .kube import CONFIGMAPS, CREDENTIALS, ROUTES, SECRETS, Cluster, OperatorRunner, b64, unb64, wait_for
from .objects import (
    RENDERED,
    WITHIN,
    Serve,
    basic_setup,
    condition,
    config_of,
    credential,
    ide_file,
    route,
    secret,
    wait_condition,
    warning,
)

VICTIM_KEY = "sk-VICTIM-0123456789"


async def everything_written(cluster: Cluster) -> str:
    """Every object the operator writes or reports through, decoded: where a refused key must not appear."""
    objects = [await cluster.get(kind, name) for kind, name in (
        (CONFIGMAPS, RENDERED), (SECRETS, RENDERED), (CREDENTIALS, "thief"), (ROUTES, "steal"))]  # fmt: skip
    rendered = (objects[1] or {}).get("data") or {}
    return json.dumps([objects, unb64(rendered), await cluster.events()])


async def test_a_secret_without_the_opt_in_label_backs_no_credential(
    cluster: Cluster, operator: OperatorRunner
) -> None:
    await basic_setup(cluster, operator)
    await cluster.create(SECRETS, secret("victim-keys", opted_in=False, prod=VICTIM_KEY))
    await cluster.create(CREDENTIALS, credential("thief", "openai-compatibility", "prod", secret_name="victim-keys",
                                                 baseURL="https://collector.evil.example/v1"))  # fmt: skip
    await cluster.create(ROUTES, route("steal", "thief", models=("gpt-4o-mini",)))
    thief = await wait_condition(cluster, operator, CREDENTIALS, "thief", "Ready", "False", "SecretNotOptedIn")
    assert OPT_IN_LABEL in condition(thief, "SecretsResolved")["message"] and thief["status"]["usableKeys"] == 0
    event = await warning(cluster, operator, "thief", "SecretNotOptedIn")
    assert "'victim-keys'" in event["message"]
    await wait_condition(cluster, operator, ROUTES, "steal", "Ready", "False", "CredentialNotReady")
    written = await everything_written(cluster)
    assert VICTIM_KEY not in written and b64(VICTIM_KEY) not in written
    configmap = await cluster.get(CONFIGMAPS, RENDERED)
    assert configmap is not None and "evil.example" not in json.dumps(config_of(configmap))

    # The Secret's owner, and only they, can lift it: the label is the switch.
    await cluster.patch(SECRETS, "victim-keys", {"metadata": {"labels": {OPT_IN_LABEL: "true"}}})
    await wait_condition(cluster, operator, CREDENTIALS, "thief", "Ready", "True")


@pytest.mark.parametrize(
    ("labelled", "allows_url", "reason", "says"),
    [
        (True, False, "RefreshURLNotAllowed", "cliproxy.io/refresh-url"),  # opted in, but not to this URL
        (False, True, "SecretNotOptedIn", OPT_IN_LABEL),  # an annotation alone is no opt-in
    ],
)
async def test_a_token_secret_the_owner_did_not_open_to_this_url_sends_nothing(
    fast_tokens: None,
    cluster: Cluster,
    operator: OperatorRunner,
    aiohttp_server: Serve,
    labelled: bool,
    allows_url: bool,
    reason: str,
    says: str,
) -> None:
    collector, url = await start_kiro(aiohttp_server, token_ttl=600)  # the attacker's server, speaking Kiro
    login = ide_file(collector, 1.0)  # due for a refresh at once
    metadata: dict[str, Any] = {"name": "kiro-login", "labels": {OPT_IN_LABEL: "true"} if labelled else {}}
    if allows_url:
        metadata["annotations"] = {REFRESH_URL_ANNOTATION: url}
    await cluster.create(SECRETS, {"metadata": metadata, "data": {"kiro-auth-token.json": b64(login)}})
    await cluster.create(CREDENTIALS, {"metadata": {"name": "thief"}, "spec": {
        "provider": "kiro", "refreshURL": url,
        "tokenSecretRef": {"name": "kiro-login", "key": "kiro-auth-token.json"}}})  # fmt: skip
    thief = await wait_condition(cluster, operator, CREDENTIALS, "thief", "Ready", "False", reason)
    assert says in condition(thief, "SecretsResolved")["message"]
    await warning(cluster, operator, "thief", reason)

    async def checked() -> dict[str, Any] | None:
        obj = await cluster.get(CREDENTIALS, "thief")
        token = ((obj or {}).get("status") or {}).get("token") or {}
        return token if token.get("state") == "failing" else None

    token = await wait_for(checked, WITHIN, message=operator.describe)
    assert says in token["message"]
    assert collector.refreshes == []  # the victim's refresh token never left
    stored = await cluster.get(SECRETS, "kiro-login")
    assert stored is not None and unb64(stored["data"])["kiro-auth-token.json"] == login
    refresh_token = json.loads(login)["refreshToken"]
    assert refresh_token not in json.dumps([await cluster.get(CREDENTIALS, "thief"), await cluster.events()])


async def test_a_newer_route_loses_only_the_contested_model(cluster: Cluster, operator: OperatorRunner) -> None:
    await basic_setup(cluster, operator)  # route team-a serves openai/gpt-4o as "gpt", and a Claude model
    await cluster.create(ROUTES, route("zz-newer", "openrouter", models=(("openai/gpt-4o", "gpt"), "mistral/large")))
    newer = await wait_condition(cluster, operator, ROUTES, "zz-newer", "Degraded", "True", "DuplicateModel")
    assert condition(newer, "Ready")["status"] == "True" and newer["status"]["models"] == ["mistral/large"]
    assert (
        "'openai/gpt-4o'" in condition(newer, "Degraded")["message"]
        and "team-a" in (condition(newer, "Degraded")["message"])
    )
    await warning(cluster, operator, "zz-newer", "DuplicateModel")
    older = await cluster.get(ROUTES, "team-a")
    assert condition(older, "Ready")["status"] == "True"
    assert older is not None and "gpt" in older["status"]["models"]


async def test_a_gateway_without_client_keys_refuses_callers(cluster: Cluster, operator: OperatorRunner) -> None:
    configmap, _ = await basic_setup(cluster, operator)
    assert "allow-unauthenticated" not in config_of(configmap) and "api-keys-file" not in config_of(configmap)
    team = await wait_condition(cluster, operator, ROUTES, "team-a", "Degraded", "True", "NoClientKeys")
    assert "cliproxy.io/client-keys-for=default" in condition(team, "Degraded")["message"]

    await cluster.patch(ROUTES, "team-a", {"spec": {"allowUnauthenticated": True}})

    async def opened() -> bool:
        current = await cluster.get(CONFIGMAPS, RENDERED)
        return current is not None and config_of(current).get("allow-unauthenticated") is True

    await wait_for(opened, WITHIN, message=operator.describe)
    await wait_condition(cluster, operator, ROUTES, "team-a", "Degraded", "False")
