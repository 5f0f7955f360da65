"""Credential health that outlives reloads: cooldowns per (credential, model), rate limits, rotation cursors.

Cooldown durations follow cliproxyapi++: 429 waits for ``Retry-After`` or backs off 1 s·2ⁿ up to 30 min;
401/402/403 rest 30 min; 404 rests 12 h; 408, 5xx and connection failures rest 60 s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import Cooldowns, RateLimit
from .runtime import Credential, Route, Target


@dataclass(slots=True)
class Cooldown:
    until: float = 0.0
    reason: str = ""
    strikes: int = 0


class _Bucket:
    """A token bucket refilled per minute; ``level`` may go negative when usage is charged afterwards."""

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.level = float(per_minute)
        self.rate = per_minute / 60.0
        self.stamp = now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self, now: float, need: float) -> float:
        self._refill(now)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount


class _Limiter:
    __slots__ = ("config", "requests", "tokens")

    def __init__(self, config: RateLimit, now: float) -> None:
        self.config = config
        self.requests = _Bucket(config.rpm, now) if config.rpm else None
        self.tokens = _Bucket(config.tpm, now) if config.tpm else None

    def wait(self, now: float) -> float:
        wait = self.requests.wait(now, 1.0) if self.requests else 0.0
        if self.tokens:
            wait = max(wait, self.tokens.wait(now, 1.0))
        return wait


def classify(status: int | None) -> str | None:
    """The cooldown reason for an upstream outcome; None means the failure is the request's own fault."""
    if status is None or status == 408 or status >= 500:
        return "transient"
    if status == 429:
        return "quota"
    if status in (401, 402, 403):
        return "auth"
    if status == 404:
        return "not_found"
    return None


class Health:
    """Mutable state shared by every snapshot; keyed by credential id, so a reload keeps cooldowns."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.cooldowns: dict[tuple[str, str], Cooldown] = {}
        self.cursors: dict[str, int] = {}
        self.limiters: dict[str, _Limiter] = {}

    def sync(self, credentials: tuple[Credential, ...]) -> None:
        """Adopt a new snapshot's credentials: keep state of the unchanged, drop that of the removed."""
        now = self.clock()
        live = {c.id: c for c in credentials}
        limiters = {}
        for cid, credential in live.items():
            old = self.limiters.get(cid)
            if credential.rate_limit is not None:
                same = old is not None and old.config == credential.rate_limit
                limiters[cid] = old if same and old else _Limiter(credential.rate_limit, now)
        self.limiters = limiters
        self.cooldowns = {k: v for k, v in self.cooldowns.items() if k[0] in live}

    def blocked_for(self, target: Target, now: float) -> float:
        """Seconds until this target may be tried: the longer of its cooldown and its rate limit."""
        wait = 0.0
        cooldown = self.cooldowns.get((target.credential.id, target.upstream_model))
        if cooldown is not None and cooldown.until > now:
            wait = cooldown.until - now
        limiter = self.limiters.get(target.credential.id)
        if limiter is not None:
            wait = max(wait, limiter.wait(now))
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
                if strategy == "fill-first":
                    return ready[0]
                turn = self.cursors.get(route.model, 0)
                self.cursors[route.model] = turn + 1
                return ready[turn % len(ready)]
        return None

    def soonest(self, route: Route) -> float:
        """Seconds until any supported target of the route may be tried again (0: one is ready now)."""
        now = self.clock()
        waits = [self.blocked_for(t, now) for t in route.targets]
        return min(waits, default=math.inf)

    def charge_request(self, credential: Credential) -> None:
        limiter = self.limiters.get(credential.id)
        if limiter is not None and limiter.requests is not None:
            limiter.requests.take(1.0)

    def charge_tokens(self, credential: Credential, tokens: int) -> None:
        limiter = self.limiters.get(credential.id)
        if limiter is not None and limiter.tokens is not None:
            limiter.tokens.take(float(tokens))

    def succeed(self, target: Target) -> None:
        self.cooldowns.pop((target.credential.id, target.upstream_model), None)

    def fail(self, target: Target, reason: str, retry_after: float | None, config: Cooldowns) -> float:
        """Start a cooldown for the target; returns its length in seconds (0 when cooling is off)."""
        if not target.credential.cooling:
            return 0.0
        key = (target.credential.id, target.upstream_model)
        state = self.cooldowns.setdefault(key, Cooldown())
        if reason == "quota":
            state.strikes += 1
            backoff = min(config.quota_base * 2 ** (state.strikes - 1), config.quota_max)
            seconds = retry_after if retry_after is not None else backoff
        else:
            seconds = {"auth": config.auth, "not_found": config.not_found}.get(reason, config.transient)
        state.until = self.clock() + seconds
        state.reason = reason
        return seconds

    def cooling(self, credential: Credential) -> bool:
        """Whether any model of this credential is resting now (for the health gauges)."""
        now = self.clock()
        return any(k[0] == credential.id and v.until > now for k, v in self.cooldowns.items())
