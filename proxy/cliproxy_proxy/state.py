"""The state every request shares: the live snapshot, credential health, metrics, limits and the upstream pool.

Apart from the app so that the exchange, reloads and embeddings can name it without importing the app that
imports them.
"""

from __future__ import annotations

from .accounting import Accounting
from .clients import ClientUsage
from .discovery import Discovery
from .health import Health
from .limits import Limits
from .metrics import Metrics, SessionRow
from .runtime import Runtime
from .upstream import Pool


class Proxy:
    """Everything requests share: the live snapshot, credential health, metrics and the upstream pool."""

    def __init__(self, runtime: Runtime, *, configured: bool = True) -> None:
        self.runtime = runtime
        self.configured = configured  # False: started empty, waiting for a first config from the Kubernetes API
        self.generation = 1
        self.health = Health()
        self.metrics = Metrics()
        self.discovery = Discovery(self.metrics.discovered)
        self.draining = False
        self.pool = Pool()
        self.limits = Limits(self.metrics.registry, self.health)
        self.health.share = self.limits.share
        self.client_usage = ClientUsage(self.metrics.registry)
        self.limits.configure(runtime.config.redis)
        self.accounting = Accounting(self.metrics.registry, self.limits, self.client_usage)
        self.accounting.configure(runtime.config)
        self.metrics_port = runtime.config.metrics_port  # read at start, like the main port: a reload keeps it
        self.metrics_host: str | None = None
        self.health.sync(runtime.credentials)
        self.metrics.watch_credentials(
            self.credential_states, self.session_states, lambda: self.discovery.failing(self.runtime.credentials)
        )
        self._mark_loaded()

    async def close(self) -> None:
        await self.runtime.sessions.retire(set())
        self.runtime.sessions.pool.close()
        self.pool.close()
        await self.limits.close()
        await self.accounting.close()

    def apply(self, runtime: Runtime) -> None:
        """Make a new snapshot live: one assignment; requests in flight keep the one they started with."""
        self.health.sync(runtime.credentials)
        self.limits.configure(runtime.config.redis)
        self.accounting.configure(runtime.config)
        self.runtime = runtime
        self.configured = True
        self.generation += 1
        self._mark_loaded()

    def _mark_loaded(self) -> None:
        self.metrics.reloads.labels("success").inc()
        self.metrics.generation.set(self.generation)
        self.metrics.last_reload.set(self.runtime.loaded_at)

    def session_states(self) -> list[SessionRow]:
        return [
            (c.provider, c.label, c.session.state, c.session.expires_at, c.session.refresh_count)
            for c in self.runtime.credentials
            if c.session is not None
        ]

    def credential_states(self) -> dict[str, tuple[int, int]]:
        states: dict[str, tuple[int, int]] = {}
        for credential in self.runtime.credentials:
            healthy, cooling = states.get(credential.provider, (0, 0))
            if self.health.cooling(credential):
                cooling += 1
            else:
                healthy += 1
            states[credential.provider] = (healthy, cooling)
        return states
