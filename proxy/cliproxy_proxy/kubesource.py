"""The rendered ConfigMap and Secret read through the Kubernetes API, with the mounted volume as the fallback.

A mounted ConfigMap reaches a pod only after the kubelet's sync, a minute or two after the operator wrote it.
Watching the two objects through the API applies a change within a second. When the API cannot be reached, the
objects it last delivered keep serving until the volume's files change; a proxy that never reached the API
serves the volume. Either way the content hash is the one the volume would give, so the same content found
through the other path is not loaded twice.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .config import ConfigError, ConfigPending, ProxyConfig
from .loader import CONFIG_NAMES, ConfigSource, decode_config

log = logging.getLogger("cliproxy.kube")

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
WATCH_SECONDS = 60  # the server ends each watch after this; the list that follows catches anything missed
MAX_BACKOFF = 10.0
USER_AGENT = "cliproxy-proxy"

Data = Mapping[str, bytes]


class ApiError(Exception):
    """The API server answered, but not with what was asked for (403 from RBAC, 404 namespace, ...)."""


@dataclass(frozen=True, slots=True)
class ApiServer:
    """How to reach the API server: the pod's service account, a kubeconfig, or an explicit URL (and token, CA)."""

    url: str
    token_file: Path | None = None
    ca_file: Path | None = None
    token: str | None = field(default=None, repr=False)
    client_cert: tuple[str, str] | None = None  # (certificate file, key file)
    verify: bool = True

    @classmethod
    def in_cluster(cls) -> ApiServer:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        if not host:
            raise ConfigError(
                "(kubernetes): not running in a cluster; pass --kubeconfig, or --kube-api with the API server's URL"
            )
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", SERVICE_ACCOUNT / "token", SERVICE_ACCOUNT / "ca.crt")

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None) -> ApiServer:
        """The server, credentials and CA of a kubeconfig context, read by the ``kubernetes`` library's loader
        (``$KUBECONFIG`` or ``~/.kube/config`` by default; inline data lands in temporary files)."""
        try:
            from kubernetes import client, config
        except ImportError:
            raise ConfigError("(kubernetes): --kubeconfig needs the kubernetes package (cliproxy[operator])") from None
        settings = client.Configuration()
        try:
            config.load_kube_config(config_file=path, context=context, client_configuration=settings)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as error:
            raise ConfigError(f"(kubernetes): kubeconfig unusable: {error}") from None
        bearer = (settings.api_key or {}).get("authorization") or (settings.api_key or {}).get("BearerToken")
        token = bearer.removeprefix("Bearer ").strip() if bearer else None
        cert = (settings.cert_file, settings.key_file) if settings.cert_file and settings.key_file else None
        ca = Path(settings.ssl_ca_cert) if settings.ssl_ca_cert else None
        return cls(settings.host, ca_file=ca, token=token, client_cert=cert, verify=bool(settings.verify_ssl))

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.url.startswith("https:"):
            return True
        if not self.verify:
            return False
        if self.ca_file is None and self.client_cert is None:
            return True  # aiohttp's default verification
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.client_cert is not None:
            context.load_cert_chain(*self.client_cert)
        return context

    def headers(self) -> dict[str, str]:
        """Read for every connection: projected service-account tokens are rotated by the kubelet."""
        if self.token is not None:
            return {"Authorization": f"Bearer {self.token}"}
        if self.token_file is None:
            return {}
        try:
            return {"Authorization": "Bearer " + self.token_file.read_text().strip()}
        except OSError:
            return {}


def in_cluster_namespace() -> str | None:
    try:
        return (SERVICE_ACCOUNT / "namespace").read_text().strip() or None
    except OSError:
        return None


def object_data(kind: str, obj: Mapping[str, Any]) -> dict[str, bytes]:
    """A ConfigMap's or Secret's keys as bytes, as the volume would hold them."""
    decode = base64.b64decode
    if kind == "secrets":
        return {k: decode(v) for k, v in (obj.get("data") or {}).items()}
    data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


class ObjectWatch:
    """Keeps one named object's data current: a list narrowed to its name, then a watch from that version.

    Narrowing by ``metadata.name`` is what lets RBAC grant get, list and watch on exactly this object.
    """

    def __init__(self, session: aiohttp.ClientSession, api: ApiServer, namespace: str, kind: str, name: str,
                 changed: Callable[[], None]) -> None:  # fmt: skip
        self.session = session
        self.api = api
        self.kind = kind
        self.url = f"{api.url.rstrip('/')}/api/v1/namespaces/{namespace}/{kind}"
        self.selector = f"metadata.name={name}"
        self.what = f"{kind[:-1]} {namespace}/{name}"
        self.changed = changed
        self.data: Data | None = None  # None: the object does not exist
        self.existed = False  # it was seen once: its absence now means deleted, not "not rendered yet"
        self.synced = False
        self.tried = asyncio.Event()  # set once the first list has succeeded or failed

    async def run(self) -> None:
        backoff = 0.5
        loop = asyncio.get_running_loop()
        while True:
            try:
                version = await self._list()
                started = loop.time()
                await self._watch(version)
                if loop.time() - started > 1.0:
                    backoff = 0.5
                else:  # a server that ends every watch at once must not be hammered with lists
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
            except (aiohttp.ClientError, TimeoutError, ApiError, ValueError, KeyError, binascii.Error) as error:
                if self.synced or not self.tried.is_set():
                    log.warning("%s: the Kubernetes API is unreachable (%s); the last objects or the volume serve",
                                self.what, str(error) or type(error).__name__)  # fmt: skip
                self.synced = False
                self.tried.set()
                self.changed()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _headers(self) -> dict[str, str]:
        return await asyncio.to_thread(self.api.headers)

    async def _list(self) -> str:
        timeout = aiohttp.ClientTimeout(total=10)
        async with self.session.get(self.url, params={"fieldSelector": self.selector}, headers=await self._headers(),
                                    timeout=timeout) as response:  # fmt: skip
            if response.status != 200:
                raise ApiError(await _reason(response))
            body = await response.json(loads=json.loads, content_type=None)
        items = body.get("items") or []
        self.data = object_data(self.kind, items[0]) if items else None
        self.existed = self.existed or self.data is not None
        self.synced = True
        self.tried.set()
        self.changed()
        return str(body["metadata"]["resourceVersion"])

    async def _watch(self, version: str) -> None:
        """Apply events until the server ends the watch (then the caller lists again)."""
        params = {"watch": "true", "fieldSelector": self.selector, "resourceVersion": version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_SECONDS)}  # fmt: skip
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=WATCH_SECONDS + 30)
        async with self.session.get(self.url, params=params, headers=await self._headers(),
                                    timeout=timeout) as response:  # fmt: skip
            if response.status != 200:
                raise ApiError(await _reason(response))
            buffer = b""
            async for chunk in response.content.iter_any():  # lines can exceed aiohttp's readline limit
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip() and not self._apply(json.loads(line)):
                        return

    def _apply(self, event: Mapping[str, Any]) -> bool:
        """Take one watch event; False when the watch must restart from a fresh list."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:  # our version is older than the server keeps: list again
                return False
            raise ApiError(f"{obj.get('code')} {obj.get('message', '')}".strip())
        if kind in ("ADDED", "MODIFIED"):
            self.data = object_data(self.kind, obj)
            self.existed = True
        elif kind == "DELETED":
            self.data = None
        else:
            return True  # BOOKMARK: nothing changed
        self.changed()
        return True


async def _reason(response: aiohttp.ClientResponse) -> str:
    try:
        message = (await response.json(content_type=None)).get("message", "")
    except (ValueError, aiohttp.ClientError, AttributeError):
        message = ""
    return f"HTTP {response.status}" + (f": {message}" if message else "")


class KubeSource(ConfigSource):
    """A :class:`ConfigSource` that prefers the API's copy of the ConfigMap and Secret named ``name``."""

    def __init__(self, path: Path | str, secrets_dir: Path | str | None, *, api: ApiServer, namespace: str,
                 name: str, first_sync_timeout: float = 5.0) -> None:  # fmt: skip
        super().__init__(path, secrets_dir)
        self.api = api
        self.namespace = namespace
        self.name = name
        self.first_sync_timeout = first_sync_timeout
        self.watches: tuple[ObjectWatch, ObjectWatch] | None = None
        self._snapshot: tuple[Data | None, Data | None] | None = None  # (ConfigMap, Secret) as last delivered
        self._volume_at_loss: str | None = None
        self._lock = threading.Lock()  # reads run in worker threads, watch events on the loop
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def using_api(self) -> bool:
        return self._snapshot is not None

    async def start(self, changed: Callable[[], None]) -> None:
        """Watch both objects, waiting (briefly) for their first list so the first reload can use them."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.api.ssl_context()), headers={"User-Agent": USER_AGENT}
        )

        def on_change() -> None:
            self._take_snapshot()
            changed()

        self.watches = (
            ObjectWatch(self._session, self.api, self.namespace, "configmaps", self.name, on_change),
            ObjectWatch(self._session, self.api, self.namespace, "secrets", self.name, on_change),
        )
        self._tasks = [asyncio.create_task(w.run(), name=f"watch {w.what}") for w in self.watches]
        try:
            async with asyncio.timeout(self.first_sync_timeout):
                await asyncio.gather(*(w.tried.wait() for w in self.watches))
        except TimeoutError:
            log.warning("the Kubernetes API did not answer within %g s; the volume serves", self.first_sync_timeout)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _take_snapshot(self) -> None:
        if self.watches is None or not all(w.synced for w in self.watches):
            return
        with self._lock:
            self._snapshot = (self.watches[0].data, self.watches[1].data)
            self._volume_at_loss = None

    def _volume_fingerprint(self, extra: Iterable[Path]) -> str:
        try:
            return super().fingerprint(extra)
        except ConfigError:
            return ""

    def _view(self) -> tuple[Data | None, Data | None] | None:
        with self._lock:
            return self._snapshot

    # -- ConfigSource, answered from the API's objects while they are in force ------------------------------

    def fingerprint(self, extra: Iterable[Path] = ()) -> str:
        extra = list(extra)
        if self.watches is not None and not all(w.synced for w in self.watches) and self._view() is not None:
            volume = self._volume_fingerprint(extra)
            with self._lock:
                if self._volume_at_loss is None:
                    self._volume_at_loss = volume
                elif volume != self._volume_at_loss:  # the kubelet synced something newer than our last objects
                    log.info("the volume changed while the Kubernetes API is unreachable; the volume serves")
                    self._snapshot = None
        view = self._view()
        if view is None:
            return super().fingerprint(extra)
        digest = hashlib.sha256()
        for path in [*self._files(view), *extra]:
            digest.update(str(path).encode())
            content = self._content(view, path)
            digest.update(b"\0missing" if content is None else content)
        return digest.hexdigest()

    def read_config(self) -> tuple[ProxyConfig, bytes]:
        view = self._view()
        if view is None:
            return super().read_config()
        configmap = view[0]
        if configmap is None and self.watches is not None and self.watches[0].existed:
            # Deleted: serve nothing, as the operator's empty gateway does, rather than the deleted routes and
            # keys; every replica, running or restarted, converges on the same (empty) config.
            log.warning("ConfigMap %s/%s was deleted: serving no routes", self.namespace, self.name)
            return ProxyConfig(), b""
        if configmap is None:
            raise ConfigPending(
                f"(top level): ConfigMap {self.namespace}/{self.name} does not exist (yet)", indefinite=True
            )
        name = next((n for n in CONFIG_NAMES if n in configmap), None)
        if name is None:
            raise ConfigError(f"(top level): ConfigMap {self.namespace}/{self.name} has no {' or '.join(CONFIG_NAMES)}")
        return decode_config(name, configmap[name]), configmap[name]

    def read_secret(self, name: str, where: str) -> str:
        view = self._view()
        if view is None or Path(name).expanduser().is_absolute():
            return super().read_secret(name, where)
        secret = view[1]
        # The operator writes the Secret first, but the two watches may deliver its change after the ConfigMap's.
        if secret is None:
            raise ConfigPending(f"{where}: Secret {self.namespace}/{self.name} does not exist (yet)")
        if name not in secret:
            raise ConfigPending(f"{where}: Secret {self.namespace}/{self.name} has no key {name} (yet)")
        try:
            value = secret[name].decode().strip()
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: Secret {self.namespace}/{self.name} key {name} is not UTF-8 text") from None
        if not value:
            raise ConfigError(f"{where}: Secret {self.namespace}/{self.name} key {name} is empty")
        return value

    def secret_path(self, name: str) -> Path:
        path = Path(name).expanduser()
        return path if path.is_absolute() else (self.secrets_dir or self.path) / path

    def _files(self, view: tuple[Data | None, Data | None]) -> list[Path]:
        """The files the volume would hold, in the order :meth:`ConfigSource.watched_files` lists them."""
        configmap, secret = view
        config = next((n for n in CONFIG_NAMES if n in (configmap or {})), CONFIG_NAMES[0])
        files = [self.path / config]
        if self.secrets_dir is not None:
            files.extend(sorted(self.secrets_dir / k for k in (secret or {}) if not k.startswith(".")))
        return files

    def _content(self, view: tuple[Data | None, Data | None], path: Path) -> bytes | None:
        configmap, secret = view
        if path.parent == self.path and configmap is not None and path.name in configmap:
            return configmap[path.name]
        if path.parent == (self.secrets_dir or self.path) and secret is not None and path.name in secret:
            return secret[path.name]
        try:
            return path.read_bytes()  # an absolute secret path outside the objects
        except OSError:
            return None
