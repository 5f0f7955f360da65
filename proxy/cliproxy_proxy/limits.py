"""Client limits (rpm, tpm, max-parallel, token budgets): one interface, two engines.

``Local`` counts in this process (one replica). ``Shared`` counts in Redis, so every replica naming the same
Redis enforces one limit: each admission is ONE Lua script (one round trip) before the upstream call, and the
tokens an answer used are settled afterwards in a background task. While Redis is unreachable a check waits
at most ``redis.timeout``, then applies ``redis.on-error``; Redis is retried with a growing backoff.

Requests and tokens are counted in one-second buckets over a sliding minute.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis as RedisClient
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from .clients import Client
from .config import Redis
from .counters import budget_key, period, redis_from_env

log = logging.getLogger("cliproxy.limits")

WINDOW = 60  # seconds: rpm and tpm count the last minute
LEASE = 900  # seconds a max-parallel slot is held at most if its replica dies before releasing it
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """An admission: allowed, or refused with what limit and when to retry; ``ticket`` releases its slot."""

    allowed: bool
    retry_after: int = 0
    limit: str = ""
    ticket: str = ""
    counted: bool = True  # False: decided by the on-error policy, nothing to settle


ALLOWED = Verdict(True)


class Engine(Protocol):
    async def admit(self, client: Client) -> Verdict: ...

    async def settle(self, client: Client, verdict: Verdict, tokens: int) -> None: ...

    async def close(self) -> None: ...


# -- in process -----------------------------------------------------------------------------------------


@dataclass
class _Window:
    """Amounts per second over the last minute."""

    buckets: deque[list[int]] = field(default_factory=deque)  # [second, amount], oldest first
    total: int = 0

    def used(self, second: int) -> int:
        while self.buckets and self.buckets[0][0] <= second - WINDOW:
            self.total -= self.buckets.popleft()[1]
        return self.total

    def retry_after(self, second: int) -> int:
        return max(1, self.buckets[0][0] + WINDOW - second) if self.buckets else 1

    def add(self, second: int, amount: int) -> None:
        if self.buckets and self.buckets[-1][0] == second:
            self.buckets[-1][1] += amount
        else:
            self.buckets.append([second, amount])
        self.total += amount


@dataclass
class _Usage:
    requests: _Window = field(default_factory=_Window)
    tokens: _Window = field(default_factory=_Window)
    in_flight: int = 0
    period: str = ""
    spent: int = 0


class Local:
    """Limits of one replica, kept in memory by client name (a reload keeps the counts)."""

    def __init__(self) -> None:
        self.usage: dict[str, _Usage] = {}

    async def admit(self, client: Client) -> Verdict:
        now = time.time()
        second, usage = int(now), self.usage.setdefault(client.name, _Usage())
        limit, budget = client.rate_limit, client.budget
        if limit is not None and limit.rpm is not None and usage.requests.used(second) >= limit.rpm:
            return Verdict(False, usage.requests.retry_after(second), "rpm")
        if limit is not None and limit.tpm is not None and usage.tokens.used(second) >= limit.tpm:
            return Verdict(False, usage.tokens.retry_after(second), "tpm")
        if budget is not None:
            current, left = period(budget, now)
            if usage.period != current:
                usage.period, usage.spent = current, 0
            if usage.spent >= budget.tokens:
                return Verdict(False, left, "budget")
        if limit is not None and limit.max_parallel is not None:
            if usage.in_flight >= limit.max_parallel:
                return Verdict(False, 1, "max-parallel")
            usage.in_flight += 1
        usage.requests.add(second, 1)
        return ALLOWED

    async def settle(self, client: Client, verdict: Verdict, tokens: int) -> None:
        usage = self.usage.setdefault(client.name, _Usage())
        if client.rate_limit is not None and client.rate_limit.max_parallel is not None:
            usage.in_flight = max(0, usage.in_flight - 1)
        if tokens:
            usage.tokens.add(int(time.time()), tokens)
            usage.spent += tokens

    async def close(self) -> None:
        return None


# -- Redis ----------------------------------------------------------------------------------------------

# KEYS: requests, tokens, in-flight, budget. ARGV: rpm, tpm, max-parallel, budget tokens, budget seconds left,
# lease seconds, ticket. A limit of 0 is not set. Time is Redis' own, so replicas' clocks do not matter.
_ADMIT = """
local t = redis.call('TIME')
local second = tonumber(t[1])
local now = second + tonumber(t[2]) / 1000000
local rpm, tpm, parallel, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function used(key)
  local total, oldest = 0, second
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    local at = tonumber(all[i])
    if at <= second - 60 then
      redis.call('HDEL', key, all[i])
    else
      total = total + tonumber(all[i + 1])
      if at < oldest then oldest = at end
    end
  end
  return total, math.max(1, oldest + 60 - second)
end
if rpm > 0 then
  local n, wait = used(KEYS[1])
  if n >= rpm then return {0, wait, 'rpm'} end
end
if tpm > 0 then
  local n, wait = used(KEYS[2])
  if n >= tpm then return {0, wait, 'tpm'} end
end
if budget > 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= budget then
  return {0, tonumber(ARGV[5]), 'budget'}
end
if parallel > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= parallel then return {0, 1, 'max-parallel'} end
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[6]), ARGV[7])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
end
if rpm > 0 then
  redis.call('HINCRBY', KEYS[1], second, 1)
  redis.call('EXPIRE', KEYS[1], 61)
end
return {1, 0, ''}
"""

# KEYS: tokens, in-flight, budget. ARGV: tokens, ticket, budget seconds left (0: no budget), count tokens (1/0).
_SETTLE = """
local tokens = tonumber(ARGV[1])
if ARGV[2] ~= '' then redis.call('ZREM', KEYS[2], ARGV[2]) end
if tokens > 0 and ARGV[4] == '1' then
  redis.call('HINCRBY', KEYS[1], tonumber(redis.call('TIME')[1]), tokens)
  redis.call('EXPIRE', KEYS[1], 61)
end
if tokens > 0 and tonumber(ARGV[3]) > 0 then
  redis.call('INCRBY', KEYS[3], tokens)
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[3]) + 3600)
end
return 1
"""


def _keys(client: Client, budget_period: str) -> tuple[str, str, str, str]:
    """One hash tag per client: a Redis Cluster keeps all of a client's counters on one shard."""
    base = f"cliproxy:{{{client.name}}}"
    return f"{base}:requests", f"{base}:tokens", f"{base}:in-flight", budget_key(client.name, budget_period)


class Shared:
    """Limits held in Redis, one for every replica that names it."""

    def __init__(self, settings: Redis, outages: Counter) -> None:
        self.settings = settings
        self.outages = outages
        self.redis = RedisClient.from_url(
            settings.url, socket_timeout=settings.timeout, socket_connect_timeout=settings.timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,
        )  # fmt: skip
        self.admit_script = self.redis.register_script(_ADMIT)
        self.settle_script = self.redis.register_script(_SETTLE)
        self.down_until = 0.0  # monotonic time before which Redis is not tried again
        self.backoff = 0.0  # 0: reachable

    async def admit(self, client: Client) -> Verdict:
        limit, budget = client.rate_limit, client.budget
        now = time.time()
        current, left = period(budget, now) if budget is not None else ("", 0)
        ticket = os.urandom(8).hex() if limit is not None and limit.max_parallel else ""
        argv = (
            (limit.rpm or 0) if limit else 0, (limit.tpm or 0) if limit else 0,
            (limit.max_parallel or 0) if limit else 0, budget.tokens if budget else 0, left, LEASE, ticket,
        )  # fmt: skip
        answer = await self._call(self.admit_script, _keys(client, current), argv)
        if answer is None:
            allowed = self.settings.on_error == "allow"
            self.outages.labels("allowed" if allowed else "denied").inc()
            return Verdict(allowed, 1, "" if allowed else "unavailable", counted=False)
        allowed, retry_after, refused = answer
        return Verdict(bool(allowed), int(retry_after), refused.decode() if isinstance(refused, bytes) else refused,
                       ticket)  # fmt: skip

    async def settle(self, client: Client, verdict: Verdict, tokens: int) -> None:
        if not verdict.counted:
            return
        budget = client.budget
        current, left = period(budget, time.time()) if budget is not None else ("", 0)
        _, used, in_flight, spent = _keys(client, current)
        counts_tokens = int(client.rate_limit is not None and client.rate_limit.tpm is not None)
        await self._call(self.settle_script, (used, in_flight, spent), (tokens, verdict.ticket, left, counts_tokens))

    async def _call(self, script: Any, keys: tuple[str, ...], argv: tuple[Any, ...]) -> Any:
        """The script's answer, or None when Redis did not give one within the timeout (or is backing off)."""
        if self.backoff and time.monotonic() < self.down_until:
            return None
        try:
            async with asyncio.timeout(self.settings.timeout):
                answer = await script(keys=keys, args=argv)
        except (RedisError, OSError, TimeoutError) as error:
            if not self.backoff:
                log.warning("redis unreachable (%s); client limits apply on-error=%s until it is back",
                            type(error).__name__, self.settings.on_error)  # fmt: skip
            self.backoff = min(_BACKOFF_MAX, self.backoff * 2 or _BACKOFF_FIRST)
            self.down_until = time.monotonic() + self.backoff
            return None
        if self.backoff:
            log.warning("redis reachable again; client limits are shared again")
            self.backoff = 0.0
        return answer

    async def close(self) -> None:
        await self.redis.aclose()


class Limits:
    """The proxy's limit engine for its config: Redis when ``redis`` is set (or the deployment names one in
    ``CLIPROXY_REDIS_URL``, read once at start), else in process.

    Settling runs in background tasks, so an answer never waits for it.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.outages = Counter(
            "cliproxy_limit_store_unavailable", "Client limit checks decided by redis.on-error, by outcome",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.settings: Redis | None = None
        self.engine: Engine = Local()
        self.default = redis_from_env()
        self.pending: set[asyncio.Task[None]] = set()

    def configure(self, settings: Redis | None) -> None:
        """Switch engines when the ``redis`` block changed; the same block keeps the engine and its counts."""
        settings = settings or self.default
        if settings == self.settings:
            return
        old, self.settings = self.engine, settings
        self.engine = Shared(settings, self.outages) if settings is not None else Local()
        self._background(old.close())

    async def admit(self, client: Client) -> Verdict:
        return await self.engine.admit(client)

    def settle(self, client: Client, verdict: Verdict, tokens: int) -> None:
        self._background(self.engine.settle(client, verdict, tokens))

    def _background(self, work: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # configured before the loop runs: the engine replaced never ran, nothing to close
            work.close()
            return
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def close(self) -> None:
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
        await self.engine.close()
