"""Credential health that outlives reloads: cooldowns per (credential, model), rate-limit holds, rotation cursors.

Verdicts the provider states keep cliproxyapi++'s durations: 429 waits for ``Retry-After`` (capped) or backs off
1 s·2ⁿ up to 30 min; 401/402/403 rest 30 min; a 404 naming the model rests it 12 h, any other 404 rests only the
endpoint that answered it. Transient faults (408, 5xx, dropped connections) are outlier detection as in Envoy:
a few in a row eject the pair for a time that grows with each recent ejection, at most half of a model's
credentials are ejected at once, and when nothing else is left the least recently failed one is tried anyway.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import Cooldowns
from .runtime import Credential, Route, Target

#: The verdicts a provider gave about a credential itself, true wherever it is used: shared between replicas.
#: Transient ejections stay each replica's own (outlier detection judges what this replica saw).
SHARED_REASONS = frozenset({"quota", "auth", "not_found"})
Share = Callable[[str, str, float, str], None]  # credential id, model, seconds, reason


@dataclass(slots=True)
class Cooldown:
    """One (credential, model)'s health: why and until when it rests, and the streaks that decide the next rest."""

    until: float = 0.0
    reason: str = ""
    strikes: int = 0  # 429s since the last success: the quota backoff's exponent
    failures: int = 0  # transient failures in a row
    ejections: int = 0  # recent ejections; one is forgiven for each base ejection time spent healthy
    ejected_until: float = 0.0
    failed_at: float = 0.0  # the last failure: panic mode tries the least recently failed first


#: Why a (credential, model) rests; also the ``reason`` label of ``cliproxy_credential_cooldowns_total``.
REASONS = frozenset({"quota", "auth", "not_found", "no_endpoint", "transient"})


def names_missing_model(body: bytes, model: str) -> bool:
    """Whether a 404 says the model is unknown (rest it everywhere) rather than the endpoint (rest only that).

    Providers that do not know a model say so and name it (OpenAI's ``model_not_found``, Anthropic's
    ``model: x``, Gemini's ``models/x is not found``); a path they do not serve gets a bare "Not Found" page, or
    OpenAI's "not supported in the v1/completions endpoint", which names the endpoint, not the model.
    """
    text = body.lower()
    if b"model_not_found" in text:
        return True
    return model.lower().encode() in text and b"not supported" not in text and b"endpoint" not in text


class Health:
    """Mutable state shared by every snapshot; keyed by credential id, so a reload keeps cooldowns."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.cooldowns: dict[tuple[str, str], Cooldown] = {}
        self.cursors: dict[str, int] = {}
        self.held: dict[str, float] = {}  # credential id -> over its rpm/tpm until (limits.py decides)
        self.unserved: dict[tuple[str, str, str], float] = {}  # (credential, model, path) -> rest until
        self.current: dict[tuple[str, str, str], int] = {}  # (route model, credential, model) -> smooth WRR weight
        self.known: frozenset[str] = frozenset()
        self.share: Share | None = None  # told of each verdict rest, to share it with the other replicas

    def sync(self, credentials: tuple[Credential, ...]) -> None:
        """Adopt a new snapshot's credentials: keep state of the unchanged, drop that of the removed."""
        now = self.clock()
        live = self.known = frozenset(c.id for c in credentials)
        self.held = {k: v for k, v in self.held.items() if k in live and v > now}
        self.cooldowns = {k: v for k, v in self.cooldowns.items() if k[0] in live}
        self.unserved = {k: v for k, v in self.unserved.items() if k[0] in live and v > now}
        self.current = {k: v for k, v in self.current.items() if k[1] in live}

    def hold(self, credential: Credential, seconds: float) -> None:
        """Skip a credential over its own rpm/tpm for ``seconds``: a cheap local note, not a failure."""
        self.held[credential.id] = self.clock() + seconds

    def adopt(self, credential_id: str, model: str, seconds: float, reason: str) -> None:
        """A rest another replica gave a (credential, model): it rests here too, at least as long."""
        if credential_id not in self.known or reason not in SHARED_REASONS:
            return
        until = self.clock() + seconds
        state = self.cooldowns.setdefault((credential_id, model), Cooldown())
        if until > state.until:
            state.until, state.reason = until, reason

    def verdict_rests(self) -> list[tuple[str, str, float, str]]:
        """The running rests for a provider's verdict, as (credential id, model, seconds left, reason)."""
        now = self.clock()
        return [
            (credential_id, model, state.until - now, state.reason)
            for (credential_id, model), state in self.cooldowns.items()
            if state.reason in SHARED_REASONS and state.until > now
        ]

    def blocked_for(self, target: Target, now: float, panic: bool = False) -> float:
        """Seconds until this target may be tried: the longer of its cooldown and its rate limit.

        ``panic``: an ejection for transient faults does not count (every other credential is out too).
        """
        wait = 0.0
        cooldown = self.cooldowns.get((target.credential.id, target.upstream_model))
        if cooldown is not None and cooldown.until > now and not (panic and cooldown.reason == "transient"):
            wait = cooldown.until - now
        held = self.held.get(target.credential.id)
        if held is not None and held > now:
            wait = max(wait, held - now)
        return wait

    def pick(self, route: Route, strategy: str, tried: set[int]) -> Target | None:
        """The next target to try: the best priority group with a ready target, then the strategy within it."""
        now = self.clock()
        for group in route.groups:
            ready = [
                t for t in group
                if id(t) not in tried and self.blocked_for(t, now) == 0
            ]  # fmt: skip
            if ready:
                if route.weighted:
                    return self._weighted(route.model, ready, strategy)
                if strategy == "fill-first":
                    return ready[0]
                turn = self.cursors.get(route.model, 0)
                self.cursors[route.model] = turn + 1
                return ready[turn % len(ready)]
        if any(self.blocked_for(t, now) == 0 for t in route.targets):
            return None  # the ready ones were tried already: no panic while any credential is healthy
        return self._panic(route, tried, now)

    def _weighted(self, model: str, ready: list[Target], strategy: str) -> Target:
        """nginx's smooth weighted round-robin: each pick adds every weight, takes the highest and charges it the
        total, so 5:1:1 goes a a b a c a a, spread rather than bunched. Weight 0 is a standby: picked only when
        no weighted credential is ready, and then shared as if each weighed 1."""
        standby = not any(t.credential.weight for t in ready)
        pool = ready if standby else [t for t in ready if t.credential.weight]
        if strategy == "fill-first" or len(pool) == 1:
            return pool[0]
        best, best_current, total = pool[0], -math.inf, 0
        for target in pool:
            weight = 1 if standby else target.credential.weight
            key = (model, target.credential.id, target.upstream_model)
            current = self.current[key] = self.current.get(key, 0) + weight
            total += weight
            if current > best_current:
                best, best_current = target, current
        self.current[(model, best.credential.id, best.upstream_model)] -= total
        return best

    def _panic(self, route: Route, tried: set[int], now: float) -> Target | None:
        """Envoy's panic mode: with every credential out, an ejected one beats refusing; the least recently failed
        has had the longest to recover. Credentials resting for a verdict (429, 401...) are never tried."""
        ejected = [t for t in route.targets if id(t) not in tried and self.blocked_for(t, now, panic=True) == 0]
        return min(ejected, key=lambda t: self.cooldowns[(t.credential.id, t.upstream_model)].failed_at, default=None)

    def soonest(self, route: Route) -> float:
        """Seconds until any supported target of the route may be tried again (0: one is ready now, or panic)."""
        now = self.clock()
        waits = [self.blocked_for(t, now, panic=True) for t in route.targets]
        return min(waits, default=math.inf)

    def succeed(self, target: Target) -> None:
        key = (target.credential.id, target.upstream_model)
        state = self.cooldowns.get(key)
        if state is None:
            return
        if not state.ejections:
            del self.cooldowns[key]
            return
        # It served (in panic mode, or after its rest): streaks end, the ejection count decays with time.
        state.until, state.reason, state.strikes, state.failures = 0.0, "", 0, 0

    def fail(
        self, target: Target, reason: str, retry_after: float | None, config: Cooldowns, route: Route | None = None
    ) -> float:
        """Count a failure, resting the target when it calls for it; returns the rest in seconds (0: none).

        ``route`` is the pool a transient ejection is capped against (max-ejection-percent).
        """
        if not target.credential.cooling:
            return 0.0
        now = self.clock()
        state = self.cooldowns.setdefault((target.credential.id, target.upstream_model), Cooldown())
        state.failed_at = now
        if reason == "transient":
            return self._eject(state, config, route, now)
        if reason == "quota":
            state.strikes += 1
            backoff = min(config.quota_base * 2.0 ** min(state.strikes - 1, 64), config.quota_max)  # no overflow
            seconds = backoff if retry_after is None else min(retry_after, config.quota_max)  # never for good
        else:
            seconds = {"auth": config.auth, "not_found": config.not_found}.get(reason, config.transient)
        state.until = now + seconds
        state.reason = reason
        if self.share is not None and seconds > 0:
            self.share(target.credential.id, target.upstream_model, seconds, reason)
        return seconds

    def _eject(self, state: Cooldown, config: Cooldowns, route: Route | None, now: float) -> float:
        if state.reason == "transient" and state.until > now:
            return 0.0  # out already, tried in panic mode: the ejection runs its course
        state.failures += 1
        if state.failures < config.consecutive_failures or config.transient <= 0:
            return 0.0
        if route is not None and not self._may_eject(route, config, now):
            return 0.0  # the pool is at its ejection cap: the streak goes on counting
        healthy = max(0.0, now - state.ejected_until)
        state.ejections = max(0, state.ejections - int(healthy // config.transient)) + 1
        seconds = min(config.transient * state.ejections, max(config.transient_max, config.transient))
        state.failures = 0
        state.until = state.ejected_until = now + seconds
        state.reason = "transient"
        return seconds

    def _may_eject(self, route: Route, config: Cooldowns, now: float) -> bool:
        """Whether one more of the route's targets may be ejected; at least one always may, as in Envoy."""
        targets = route.targets
        allowed = max(1, len(targets) * config.max_ejection_percent // 100)
        ejected = 0
        for t in targets:
            state = self.cooldowns.get((t.credential.id, t.upstream_model))
            ejected += state is not None and state.reason == "transient" and state.until > now
        return ejected < allowed

    def serves(self, target: Target, path: str) -> bool:
        """False while this target's upstream is known not to serve ``path`` (it answered 404 for it)."""
        if not self.unserved:
            return True
        until = self.unserved.get((target.credential.id, target.upstream_model, path))
        return until is None or until <= self.clock()

    def fail_endpoint(self, target: Target, path: str, config: Cooldowns) -> float:
        """Rest one endpoint of the target for ``not-found`` seconds; its other endpoints keep serving."""
        if not target.credential.cooling:
            return 0.0
        self.unserved[(target.credential.id, target.upstream_model, path)] = self.clock() + config.not_found
        return config.not_found

    def cooling(self, credential: Credential) -> bool:
        """Whether any model of this credential is resting now (for the health gauges)."""
        now = self.clock()
        return any(k[0] == credential.id and v.until > now for k, v in self.cooldowns.items())
