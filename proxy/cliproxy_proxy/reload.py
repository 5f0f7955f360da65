"""Live reload: poll the config's content hash, validate a change off to the side, swap or refuse it.

Polling a hash every second catches a Kubernetes ConfigMap volume's ``..data`` symlink swap as surely as
an editor's save, with no inotify dependency and nothing to miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from .config import ConfigError, ConfigPending, ProxyConfig
from .loader import ConfigSource
from .oauth.vendors import Sessions
from .runtime import Credential, Runtime, build_credentials, build_runtime, rerouted
from .state import Proxy

log = logging.getLogger("cliproxy.reload")
PENDING_GRACE = 10.0  # seconds a config may wait for a Secret it names before it is refused as broken


class Reloader:
    """Owns the path from files to a live :class:`Runtime`."""

    def __init__(self, proxy: Proxy, source: ConfigSource, interval: float = 1.0,
                 discovery_interval: float = 600.0) -> None:  # fmt: skip
        self.proxy = proxy
        self.source = source
        self.interval = interval
        self.discovery_interval = discovery_interval
        self.last_attempt = ""
        self.last_error = ""
        self.pending_since: float | None = None  # since when the config has waited for an object it names
        self.last_discovery = time.monotonic()
        self.wake = asyncio.Event()  # a source that is told of changes (the Kubernetes API) sets it

    async def load(self, fingerprint: str, *, refresh: bool = False) -> Runtime:
        """Read, validate and build a snapshot; raises ConfigError and leaves the proxy untouched."""
        sessions = self.proxy.runtime.sessions
        config, credentials, files = await asyncio.to_thread(self._read, sessions)
        found = await self.proxy.discovery.run(self.proxy.pool, credentials, refresh=refresh)
        return build_runtime(config, self.source, fingerprint=fingerprint, discovered=found,
                             credentials=(credentials, files), sessions=sessions)  # fmt: skip

    def _read(self, sessions: Sessions) -> tuple[ProxyConfig, list[Credential], list[Path]]:
        config, _raw = self.source.read_config()
        credentials, files = build_credentials(config, self.source, sessions)
        return config, credentials, files

    def fingerprint(self) -> str:
        return self.source.fingerprint(self.proxy.runtime.secret_files)

    async def check(self, *, force: bool = False, refresh: bool = False) -> bool:
        """Reload when the files changed (or when forced); True when a new snapshot went live."""
        try:
            fingerprint = await asyncio.to_thread(self.fingerprint)  # file reads stay off the event loop
        except ConfigError as error:
            self._refuse(error)
            return False
        if not force and fingerprint in (self.proxy.runtime.fingerprint, self.last_attempt):
            return False
        self.last_attempt = fingerprint
        try:
            runtime = await self.load(fingerprint, refresh=refresh)
        except ConfigError as error:
            self._refuse(error)
            return False
        self.pending_since = None
        self.proxy.apply(runtime)
        await runtime.sessions.retire({c.session for c in runtime.credentials if c.session is not None})
        self.last_error = ""
        log.info("config generation %d in force (%d models)", self.proxy.generation,
                     len(self.proxy.runtime.routes))  # fmt: skip
        return True

    async def retry_discovery(self) -> None:
        """Ask again for model lists that failed to arrive; new ones go live without reading any file again."""
        runtime = self.proxy.runtime
        missing = {c.id for c in runtime.credentials if c.discovers_models and c.id not in self.proxy.discovery.known}
        found = await self.proxy.discovery.run(self.proxy.pool, list(runtime.credentials))
        if self.proxy.runtime is runtime and missing & found.keys():  # a reload meanwhile already used them
            self.proxy.apply(rerouted(runtime, found))
            log.info("config generation %d in force (%d models, discovered)", self.proxy.generation,
                     len(self.proxy.runtime.routes))  # fmt: skip

    def _refuse(self, error: ConfigError) -> None:
        """Count and log a refused config once; a later change of any watched file is tried again.

        A config waiting for an object it names (:class:`ConfigPending`) is tried again every tick and is only
        refused once it has waited ``PENDING_GRACE`` seconds; one that is not there at all waits quietly.
        """
        message = str(error)
        if isinstance(error, ConfigPending):
            now = time.monotonic()
            self.pending_since = self.pending_since or now
            if error.indefinite or now - self.pending_since < PENDING_GRACE:
                if message != self.last_error:
                    log.info("config waits for an object it names: %s", message)
                self.last_error = message
                self.last_attempt = ""  # not refused: the same content is tried again next tick
                return
            self.last_error = ""  # waited long enough: refused now, and said so
        self.pending_since = None
        self.proxy.metrics.reloads.labels("failure").inc()
        if message != self.last_error:
            log.error("config refused, the last good config keeps serving: %s", message)
        self.last_error = message

    async def watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.interval)
            self.wake.clear()
            refresh = time.monotonic() - self.last_discovery > self.discovery_interval and any(
                c.discovers_models for c in self.proxy.runtime.credentials
            )
            if refresh:
                self.last_discovery = time.monotonic()
            try:
                await self.check(force=refresh, refresh=refresh)
                if self.proxy.discovery.retry_due(self.proxy.runtime.credentials):
                    await self.retry_discovery()
            except Exception:  # the watcher must outlive any surprise; the old config keeps serving
                log.exception("config reload failed unexpectedly")
