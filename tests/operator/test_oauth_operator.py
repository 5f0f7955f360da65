"""The operator as the single refresher of OAuth tokens, with proxy replicas that only adopt what it writes.

The fake Kiro vendor's tokens live a few seconds and its refresh tokens rotate (a reused one is refused), so two
refreshers racing, or a proxy sending an expired token, would show up as a failed request or a refused refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai

from cliproxy_operator.secret_rules import OPT_IN_LABEL, REFRESH_URL_ANNOTATION
from cliproxy_proxy.app import PROXY
from cliproxy_proxy.kubesource import ApiServer, KubeSource

from ..fakes.kiro import start_kiro
from .kube import CREDENTIALS, ROUTES, SECRETS, Cluster, OperatorRunner, b64, wait_for
from .objects import Serve, ide_file, proxy_for, route, wait_condition

TTL = 6.0
MESSAGES = [{"role": "user", "content": "ping"}]


def login_metadata(refresh_url: str) -> dict[str, Any]:
    """The login Secret as its owner marks it: it may back a credential and be refreshed at ``refresh_url``."""
    return {"name": "kiro-login", "labels": {OPT_IN_LABEL: "true"},
            "annotations": {REFRESH_URL_ANNOTATION: refresh_url}}  # fmt: skip


@contextlib.asynccontextmanager
async def replicas(serve: Serve, cluster: Cluster, tmp_path: Path, count: int) -> AsyncIterator[list[str]]:
    urls = []
    async with contextlib.AsyncExitStack() as stack:
        for n in range(count):
            config_dir, secrets_dir = tmp_path / f"config-{n}", tmp_path / f"secrets-{n}"
            config_dir.mkdir()
            secrets_dir.mkdir()
            source = KubeSource(config_dir, secrets_dir, api=ApiServer(cluster.url), namespace=cluster.namespace,
                                name="cliproxy-default")  # fmt: skip
            app, url = await stack.enter_async_context(proxy_for(serve, source))
            await wait_for(lambda app=app: app[PROXY].configured, 10, message="a replica never got its config")
            urls.append((app, url))
        yield urls  # type: ignore[misc]


async def test_one_operator_refreshes_for_every_replica_and_no_request_fails(
    fast_tokens: None, cluster: Cluster, operator: OperatorRunner, aiohttp_server: Serve, tmp_path: Path
) -> None:
    vendor, url = await start_kiro(aiohttp_server, token_ttl=TTL)
    seeded = ide_file(vendor, TTL)
    await cluster.create(SECRETS, {"metadata": login_metadata(url), "data": {"kiro-auth-token.json": b64(seeded)}})
    await cluster.create(CREDENTIALS, {"metadata": {"name": "kiro"}, "spec": {
        "provider": "kiro", "baseURL": url, "refreshURL": url,
        "tokenSecretRef": {"name": "kiro-login", "key": "kiro-auth-token.json"}}})  # fmt: skip
    await cluster.create(ROUTES, route("ide", "kiro", models=(("claude-sonnet-4.5", "sonnet"),)))
    await wait_condition(cluster, operator, ROUTES, "ide", "Ready", "True")

    async with replicas(aiohttp_server, cluster, tmp_path, 2) as running:
        clients = [openai.AsyncOpenAI(base_url=f"{u}/v1", api_key="any", max_retries=0) for _, u in running]
        failures: list[BaseException] = []
        done = 0

        async def worker(n: int) -> None:
            nonlocal done
            while len(vendor.refreshes) < 2:
                try:
                    completion = await clients[n % 2].chat.completions.create(model="sonnet", messages=MESSAGES)
                    assert completion.choices[0].message.content
                    done += 1
                except Exception as error:  # every failure counts
                    failures.append(error)
                await asyncio.sleep(0.05)

        await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(6))), 60)
        assert failures == [], operator.describe()
        assert done > 20
        used = [r["body"]["refreshToken"] for r in vendor.refreshes]
        assert used[0] == json.loads(seeded)["refreshToken"] and len(set(used)) == len(used)  # one per cycle
        for app, _ in running:  # the replicas never refreshed: they only adopted
            sessions = [c.session for c in app[PROXY].runtime.credentials if c.session is not None]
            assert sessions and all(s.refresh_count == 0 and not s.refresh for s in sessions)

    credential = await cluster.get(CREDENTIALS, "kiro")
    token = (credential or {}).get("status", {}).get("token", {})
    assert token.get("state") == "valid" and token.get("expiresAt") and token.get("lastRefresh")
    secret = await cluster.get(SECRETS, "kiro-login")
    stored = json.loads(__import__("base64").b64decode(secret["data"]["kiro-auth-token.json"]))  # type: ignore[index]
    assert stored["authMethod"] == "social" and stored["accessToken"] in vendor.access  # the IDE's own format

    vendor.revoke()  # the login is revoked: the operator's next refresh is refused, and says so
    await wait_for(lambda: _token_state(cluster, "rejected"), 15, message=operator.describe)
    events = [e for e in await cluster.events("kiro") if e.get("reason") == "TokenRefreshRejected"]
    assert events and events[0]["type"] == "Warning"
    everything = json.dumps([await cluster.get(CREDENTIALS, "kiro"), await cluster.events()])
    for leaked in [*used, stored["accessToken"], stored["refreshToken"]]:
        assert leaked not in everything


async def _token_state(cluster: Cluster, state: str) -> bool:
    credential: Any = await cluster.get(CREDENTIALS, "kiro")
    return bool(credential and credential.get("status", {}).get("token", {}).get("state") == state)


class FlakySecrets:
    """A CoreV1Api stand-in for one Secret: answers 409 ``conflicts`` times, as a concurrent writer would cause."""

    def __init__(self, value: bytes, conflicts: int = 0) -> None:
        import base64

        from kubernetes import client

        self.secret = client.V1Secret(metadata=client.V1ObjectMeta(name="s", resource_version="1"),
                                      data={"token": base64.b64encode(value).decode(), "other": "eA=="})  # fmt: skip
        self.conflicts = conflicts
        self.replaced = 0

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        import copy

        return copy.deepcopy(self.secret)

    def replace_namespaced_secret(self, name: str, namespace: str, body: Any) -> None:
        from kubernetes.client.exceptions import ApiException

        if self.conflicts:
            self.conflicts -= 1
            raise ApiException(status=409, reason="Conflict")
        self.secret, self.replaced = body, self.replaced + 1


def test_a_refreshed_token_survives_conflicting_writes_but_never_overwrites_a_new_login() -> None:
    import base64

    from cliproxy_operator.tokens import _write

    core = FlakySecrets(b"old", conflicts=2)
    assert _write(core, "ns", "s", "token", b"fresh", b"old")  # type: ignore[arg-type]
    assert base64.b64decode(core.secret.data["token"]) == b"fresh" and core.secret.data["other"] == "eA=="
    relogged = FlakySecrets(b"someone's new login")
    assert not _write(relogged, "ns", "s", "token", b"fresh", b"old")  # type: ignore[arg-type]
    assert relogged.replaced == 0


async def test_an_idc_login_in_a_secret_refreshes_with_the_registration_beside_it(
    fast_tokens: None, cluster: Cluster, operator: OperatorRunner, aiohttp_server: Serve
) -> None:
    """Seeded from ~/.aws/sso/cache as the README says: the token file and its ``<clientIdHash>.json``."""
    from ..fakes.kiro import CLIENT_ID, CLIENT_SECRET

    vendor, url = await start_kiro(aiohttp_server, token_ttl=600)
    login = json.loads(ide_file(vendor, 1.0))
    login.update(authMethod="IdC", provider="BuilderId", clientIdHash="0a1b2c")
    registration = {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET, "expiresAt": "2099-01-01T00:00:00Z"}
    await cluster.create(SECRETS, {"metadata": login_metadata(url), "data": {
        "kiro-auth-token.json": b64(json.dumps(login)), "0a1b2c.json": b64(json.dumps(registration))}})  # fmt: skip
    await cluster.create(CREDENTIALS, {"metadata": {"name": "kiro"}, "spec": {
        "provider": "kiro", "baseURL": url, "refreshURL": url,
        "tokenSecretRef": {"name": "kiro-login", "key": "kiro-auth-token.json"}}})  # fmt: skip

    async def refreshed() -> bool:
        credential: Any = await cluster.get(CREDENTIALS, "kiro")
        return bool(credential and credential.get("status", {}).get("token", {}).get("lastRefresh"))

    await wait_for(refreshed, 15, message=operator.describe)
    assert [r["path"] for r in vendor.refreshes] == ["/token"]
    assert vendor.refreshes[0]["body"]["clientId"] == CLIENT_ID
