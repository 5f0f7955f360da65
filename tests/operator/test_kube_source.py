"""The proxy's Kubernetes source: the rendered ConfigMap and Secret watched through the API, the volume as fallback.

These run the real proxy application against the same API backends as the operator tests (kmock's emulator,
and envtest when ``KUBEBUILDER_ASSETS`` is set), with the fake OpenAI-shaped upstream behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import openai
import pytest

from cliproxy_operator.kube import CLIENT_KEYS_LABEL
from cliproxy_proxy import __main__ as proxy_main
from cliproxy_proxy import reload
from cliproxy_proxy.app import PROXY, RELOADER
from cliproxy_proxy.kubesource import USER_AGENT, ApiServer, KubeSource

from ..support.proxy import CLIENT_KEY, FakeProvider, base_config, compat_block
from .kube import (
    CONFIGMAPS,
    CREDENTIALS,
    ROUTES,
    SECRETS,
    Cluster,
    Emulator,
    OperatorRunner,
    b64,
    emulator_log,
    setup_emulator,
    wait_for,
    write_kubeconfig,
)
from .objects import Serve, proxy_for

NAME = "cliproxy-gw"
MESSAGES = [{"role": "user", "content": "ping"}]


def rendered(provider: FakeProvider, *models: tuple[str, str]) -> dict[str, Any]:
    """A config as the operator renders it: JSON, secrets by file name."""
    block = compat_block(provider.url, models=models or (("up-small", "small"),))
    block["api-key-entries"] = [{"api-key-file": "fake-key"}]
    config = base_config(**{"openai-compatibility": [block]})
    del config["api-keys"]
    config["api-keys-file"] = "client-keys"
    return config


async def put_objects(cluster: Cluster, config: dict[str, Any], upstream_key: str = "key-a") -> None:
    await cluster.create(CONFIGMAPS, {"metadata": {"name": NAME}, "data": {"config.json": json.dumps(config)}})
    data = {"fake-key": b64(upstream_key), "client-keys": b64(CLIENT_KEY)}
    await cluster.create(SECRETS, {"metadata": {"name": NAME}, "type": "Opaque", "data": data})


def volume(tmp_path: Path) -> tuple[Path, Path]:
    config_dir, secrets_dir = tmp_path / "config", tmp_path / "secrets"
    config_dir.mkdir()
    secrets_dir.mkdir()
    return config_dir, secrets_dir


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0)


async def test_the_proxy_serves_and_follows_its_objects_through_the_api(
    cluster: Cluster, provider: FakeProvider, aiohttp_server: Serve, tmp_path: Path
) -> None:
    await put_objects(cluster, rendered(provider))
    config_dir, secrets_dir = volume(tmp_path)  # empty: the kubelet has not synced the volume yet
    source = KubeSource(config_dir, secrets_dir, api=ApiServer(cluster.url), namespace=cluster.namespace, name=NAME)
    async with proxy_for(aiohttp_server, source) as (app, url):
        proxy = app[PROXY]
        assert source.using_api and proxy.configured
        completion = await client(url).chat.completions.create(model="small", messages=MESSAGES)
        assert completion.choices[0].message.content and provider.received[-1].key == "key-a"

        # A route change reaches the proxy through the watch, long before any kubelet sync.
        started = time.monotonic()
        await cluster.patch(CONFIGMAPS, NAME, {"data": {"config.json": json.dumps(
            rendered(provider, ("up-small", "small"), ("up-large", "big")))}})  # fmt: skip
        await wait_for(lambda: "big" in proxy.runtime.routes, 5, message="the ConfigMap change never went live")
        print(f"ConfigMap change live after {1000 * (time.monotonic() - started):.0f} ms")

        # A rotated key is used by the next request, without a restart.
        await cluster.patch(SECRETS, NAME, {"data": {"fake-key": b64("key-b")}})
        await wait_for(
            lambda: proxy.runtime.credentials[0].secret == "key-b", 5, message="the rotated key never arrived"
        )
        await client(url).chat.completions.create(model="big", messages=MESSAGES)
        assert provider.received[-1].key == "key-b"

        # A broken config is refused; the last good one keeps serving.
        generation = proxy.generation
        await cluster.patch(CONFIGMAPS, NAME, {"data": {"config.json": '{"openai-compatibility": [{"name": 1}]}'}})
        reloader = app[RELOADER]
        await wait_for(lambda: reloader.last_error, 5, message="the broken config was not refused")
        assert "openai-compatibility[0]" in reloader.last_error and proxy.generation == generation
        await client(url).chat.completions.create(model="big", messages=MESSAGES)

    # Least privilege: only reads of exactly these two objects, each narrowed by name (what RBAC resourceNames need).
    calls = [r for r in cluster.log() if r.agent == USER_AGENT]
    assert {(r.method, r.resource, r.namespace, r.selector, r.watch) for r in calls} == {
        ("GET", kind, cluster.namespace, f"metadata.name={NAME}", watch)
        for kind in (CONFIGMAPS, SECRETS)
        for watch in (False, True)
    }
    assert len(calls) == 4, "one list and one long watch per object, no relisting churn"


async def test_a_configmap_ahead_of_its_secret_waits_instead_of_being_refused(
    cluster: Cluster, provider: FakeProvider, aiohttp_server: Serve, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """The two watches may deliver a ConfigMap before the Secret it names: that is not a broken config."""
    monkeypatch.setattr(reload, "PENDING_GRACE", 30.0)  # far longer than a loaded machine takes to get here
    config_dir, secrets_dir = volume(tmp_path)
    source = KubeSource(config_dir, secrets_dir, api=ApiServer(cluster.url), namespace=cluster.namespace, name=NAME)
    async with proxy_for(aiohttp_server, source) as (app, url):
        proxy, reloader = app[PROXY], app[RELOADER]
        await cluster.create(CONFIGMAPS, {"metadata": {"name": NAME},
                                          "data": {"config.json": json.dumps(rendered(provider))}})  # fmt: skip
        await wait_for(lambda: "Secret" in reloader.last_error, 5, message="the ConfigMap never arrived")
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
            assert response.status == 503 and "Secret" in (await response.json())["error"]
        assert not [r for r in caplog.records if "config refused" in r.getMessage()]
        assert proxy.metrics.reloads.labels("failure")._value.get() == 0
        data = {"fake-key": b64("key-a"), "client-keys": b64(CLIENT_KEY)}
        await cluster.create(SECRETS, {"metadata": {"name": NAME}, "type": "Opaque", "data": data})
        await wait_for(lambda: proxy.configured, 5, message="the Secret's arrival did not complete the config")
        assert reloader.last_error == ""

        # A Secret that stays without a key the config names is refused once the grace period is over.
        monkeypatch.setattr(reload, "PENDING_GRACE", 0.5)
        await cluster.patch(CONFIGMAPS, NAME, {"data": {"config.json": json.dumps(
            {**rendered(provider), "api-keys-file": "other-keys"})}})  # fmt: skip
        await wait_for(lambda: [r for r in caplog.records if "config refused" in r.getMessage()], 5,
                       message=lambda: f"never refused: {reloader.last_error!r} {reloader.pending_since}")  # fmt: skip
        assert "has no key other-keys" in reloader.last_error
        assert proxy.runtime.config.api_keys_file == "client-keys"  # the last good config keeps serving
        assert proxy.metrics.reloads.labels("failure")._value.get() >= 1


async def test_a_proxy_waits_not_ready_until_its_configmap_exists(
    cluster: Cluster, provider: FakeProvider, aiohttp_server: Serve, tmp_path: Path
) -> None:
    config_dir, secrets_dir = volume(tmp_path)
    source = KubeSource(config_dir, secrets_dir, api=ApiServer(cluster.url), namespace=cluster.namespace, name=NAME)
    async with proxy_for(aiohttp_server, source) as (app, url), aiohttp.ClientSession() as http:
        async with http.get(f"{url}/readyz") as response:
            assert response.status == 503
            assert "does not exist" in (await response.json())["error"]
        await put_objects(cluster, rendered(provider))
        await wait_for(lambda: app[PROXY].configured, 5, message="the proxy never picked up its new objects")
        async with http.get(f"{url}/readyz") as response:
            assert response.status == 200
        await client(url).chat.completions.create(model="small", messages=MESSAGES)


async def test_a_deleted_configmap_serves_no_routes_instead_of_the_deleted_ones(
    cluster: Cluster, provider: FakeProvider, aiohttp_server: Serve, tmp_path: Path
) -> None:
    """A running replica and a restarted one converge: both serve nothing once the objects are gone."""
    await put_objects(cluster, rendered(provider))
    config_dir, secrets_dir = volume(tmp_path)
    source = KubeSource(config_dir, secrets_dir, api=ApiServer(cluster.url), namespace=cluster.namespace, name=NAME)
    async with proxy_for(aiohttp_server, source) as (app, url):
        proxy = app[PROXY]
        await client(url).chat.completions.create(model="small", messages=MESSAGES)
        await cluster.delete(CONFIGMAPS, NAME)
        await cluster.delete(SECRETS, NAME)
        await wait_for(lambda: not proxy.runtime.routes, 5, message="the deleted routes kept serving")
        assert not proxy.runtime.credentials and app[RELOADER].last_error == ""  # not a refused config
        with pytest.raises(openai.APIStatusError) as refused:  # neither the old route nor its client key
            await client(url).chat.completions.create(model="small", messages=MESSAGES)
        assert refused.value.status_code in (401, 404)


async def test_a_proxy_outside_a_pod_reaches_the_api_through_a_kubeconfig(
    cluster: Cluster, provider: FakeProvider, aiohttp_server: Serve, tmp_path: Path
) -> None:
    """``--kubeconfig`` takes the server, token and CA of the current context (what ``kubectl`` would use)."""
    if cluster.emulator is None:
        pytest.skip("the emulator records the bearer token each request carries")
    await put_objects(cluster, rendered(provider))
    config_dir, secrets_dir = volume(tmp_path)
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, cluster.url, token="outside-token")
    args = proxy_main._parser().parse_args([
        "--config", str(config_dir), "--secrets-dir", str(secrets_dir), "--kube-name", NAME,
        "--kube-namespace", cluster.namespace, "--kubeconfig", str(kubeconfig),
    ])  # fmt: skip
    source = proxy_main._source(args)
    assert isinstance(source, KubeSource) and source.api.url == cluster.url
    async with proxy_for(aiohttp_server, source) as (_app, url):
        await client(url).chat.completions.create(model="small", messages=MESSAGES)
    tokens = {dict(r.headers).get("Authorization") for r in cluster.emulator._requests
              if dict(r.headers).get("User-Agent") == USER_AGENT}  # fmt: skip
    assert tokens == {"Bearer outside-token"}


def write_volume(config_dir: Path, secrets_dir: Path, config: dict[str, Any], upstream_key: str = "key-a") -> None:
    (config_dir / "config.json").write_text(json.dumps(config))
    (secrets_dir / "fake-key").write_text(upstream_key)
    (secrets_dir / "client-keys").write_text(CLIENT_KEY)


async def test_without_the_api_the_volume_serves(provider: FakeProvider, aiohttp_server: Serve, tmp_path: Path) -> None:
    config_dir, secrets_dir = volume(tmp_path)
    write_volume(config_dir, secrets_dir, rendered(provider))
    with socket_closed_port() as port:
        api = ApiServer(f"http://127.0.0.1:{port}")
        source = KubeSource(config_dir, secrets_dir, api=api, namespace="ns", name=NAME, first_sync_timeout=2)
        async with proxy_for(aiohttp_server, source) as (app, url):
            assert not source.using_api and app[PROXY].configured
            await client(url).chat.completions.create(model="small", messages=MESSAGES)
            write_volume(config_dir, secrets_dir, rendered(provider, ("up-large", "vol")))
            await wait_for(lambda: "vol" in app[PROXY].runtime.routes, 5, message="the volume change was missed")


class Relay:
    """A TCP hop in front of the API server that can be cut, as a crash or a network partition would."""

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit("//", 1)[1].rsplit(":", 1)
        self.port = int(port)
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self.writers += [writer, up_writer]

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()


async def test_losing_the_api_keeps_its_objects_until_the_volume_moves_on(
    provider: FakeProvider, aiohttp_server: Serve, tmp_path: Path
) -> None:
    config_dir, secrets_dir = volume(tmp_path)
    write_volume(config_dir, secrets_dir, rendered(provider, ("up-small", "stale")))  # older than the API's copy
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        setup_emulator(emulator)
        url = str(server.url).rstrip("/")
        async with Cluster("emulator", url, "ns", emulator_log(emulator)) as cluster:
            await put_objects(cluster, rendered(provider, ("up-small", "fresh")))
        relay = Relay(url)
        source = KubeSource(config_dir, secrets_dir, api=ApiServer(await relay.start()), namespace="ns", name=NAME)
        async with proxy_for(aiohttp_server, source) as (app, proxy_url):
            proxy = app[PROXY]
            await wait_for(lambda: "fresh" in proxy.runtime.routes, 5, message="the API's copy was not loaded")

            relay.cut()  # the API server becomes unreachable ...
            assert source.watches is not None
            await wait_for(lambda: not any(w.synced for w in source.watches), 10, message="the loss went unnoticed")
            generation = proxy.generation
            await wait_for(lambda: source.fingerprint(proxy.runtime.secret_files) == proxy.runtime.fingerprint, 2)
            assert "fresh" in proxy.runtime.routes and proxy.generation == generation  # ... its last objects serve on

            write_volume(config_dir, secrets_dir, rendered(provider, ("up-large", "synced")))  # the kubelet catches up
            await wait_for(lambda: "synced" in proxy.runtime.routes, 5, message="the newer volume was not adopted")
            await client(proxy_url).chat.completions.create(model="synced", messages=MESSAGES)


@contextlib.contextmanager
def socket_closed_port() -> Any:
    """A loopback port nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield port


@pytest.mark.parametrize("compressed", [False, True])
async def test_a_gzipped_config_in_binary_data_is_read(
    cluster: Cluster, provider: FakeProvider, aiohttp_server: Serve, tmp_path: Path, compressed: bool
) -> None:
    import base64
    import gzip

    text = json.dumps(rendered(provider)).encode()
    data = {"binaryData": {"config.json.gz": base64.b64encode(gzip.compress(text)).decode()}} if compressed else {
        "data": {"config.json": text.decode()}}  # fmt: skip
    await cluster.create(CONFIGMAPS, {"metadata": {"name": NAME}, **data})
    await cluster.create(SECRETS, {"metadata": {"name": NAME}, "data": {"fake-key": b64("key-a"),
                                                                       "client-keys": b64(CLIENT_KEY)}})  # fmt: skip
    config_dir, secrets_dir = volume(tmp_path)
    source = KubeSource(config_dir, secrets_dir, api=ApiServer(cluster.url), namespace=cluster.namespace, name=NAME)
    async with proxy_for(aiohttp_server, source) as (app, url):
        assert app[PROXY].configured
        await client(url).chat.completions.create(model="small", messages=MESSAGES)


async def test_operator_and_proxy_end_to_end_with_rotated_client_keys(
    cluster: Cluster, operator: OperatorRunner, provider: FakeProvider, aiohttp_server: Serve, tmp_path: Path
) -> None:
    """What a cluster does: the operator renders, the proxy watches the rendered objects, clients rotate keys."""
    from .objects import credential, rendered_objects, route, secret, wait_condition

    await cluster.create(SECRETS, secret("llm-keys", upstream="key-a"))
    keys = secret("gateway-clients", primary=CLIENT_KEY)
    keys["metadata"]["labels"] = {CLIENT_KEYS_LABEL: "default"}
    await cluster.create(SECRETS, keys)
    await cluster.create(CREDENTIALS, credential("fake", "openai-compatibility", "upstream", baseURL=provider.url))
    await cluster.create(ROUTES, route("team", "fake", models=(("up-small", "small"),)))
    await wait_condition(cluster, operator, ROUTES, "team", "Ready", "True")
    configmap, _ = await rendered_objects(cluster, operator)
    assert json.loads(configmap["data"]["config.json"])["api-keys-file"] == "client-keys"

    config_dir, secrets_dir = volume(tmp_path)
    api = ApiServer(cluster.url)
    source = KubeSource(config_dir, secrets_dir, api=api, namespace=cluster.namespace, name="cliproxy-default")
    async with proxy_for(aiohttp_server, source) as (_, url):
        await client(url).chat.completions.create(model="small", messages=MESSAGES)
        assert provider.received[-1].key == "key-a"

        await cluster.patch(SECRETS, "gateway-clients", {"data": {"primary": b64("client-key-2")}})
        rotated = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="client-key-2", max_retries=0)

        async def accepted() -> bool:
            try:
                await rotated.chat.completions.create(model="small", messages=MESSAGES)
            except openai.AuthenticationError:
                return False
            return True

        await wait_for(
            accepted, 10, interval=0.1, message=lambda: f"the new client key was refused\n{operator.describe()}"
        )
        with pytest.raises(openai.AuthenticationError):
            await client(url).chat.completions.create(model="small", messages=MESSAGES)
