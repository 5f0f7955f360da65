"""Client limits (rpm, tpm, max-parallel, budgets in tokens and US dollars) and upstream credentials' rpm/tpm:
one interface, two engines.

``Local`` counts in this process (one replica). ``Shared`` counts in Redis, so every replica naming the same
Redis enforces one limit: each admission is ONE Lua script (one round trip) before the upstream call, and the
tokens and cost answers used are settled afterwards, summed per client and flushed every 0.1 s (so a tpm or a
budget sees an answer at most that much later). While Redis is unreachable a check waits
at most ``redis.timeout``, then applies ``redis.on-error``; Redis is retried with a growing backoff.

A limited client's admission is asked as its request arrives and answered while the proxy reads and routes the
body, so at one request at a time its round trip mostly costs nothing. A limited credential's reservation is one
more script when the credential is chosen, once its client is admitted (a client refused spends nothing of it).

Requests and tokens are counted in one-second buckets over a sliding minute. Dollars are counted as whole
micro-dollars, so Redis adds them exactly.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from .autopipe import AutoPipeline, Script
from .clients import Client
from .config import Budget, Redis
from .cooldowns import CooldownFeed
from .counters import budget_key, period, redis_from_env, spend_key
from .health import Health
from .runtime import Credential
from .store import UNAVAILABLE, connect

log = logging.getLogger("cliproxy.limits")

WINDOW = 60  # seconds: rpm and tpm count the last minute
MICRO = 1_000_000  # micro-dollars per US dollar
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
    def admit(self, client: Client) -> Awaitable[Verdict]: ...

    def settle(self, client: Client, verdict: Verdict, tokens: int, micro_usd: int = 0) -> None: ...

    async def spent(self, client: Client) -> tuple[int, int] | None: ...

    async def reserve(self, credential: Credential) -> float: ...

    def spend(self, credential: Credential, tokens: int) -> None: ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...


def budget_limits(budget: Budget | None) -> tuple[int, int]:
    """The budget's tokens and micro-dollars (0: that amount is not limited)."""
    if budget is None:
        return 0, 0
    return budget.tokens or 0, round(budget.usd * MICRO) if budget.usd is not None else 0


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
    spent: int = 0  # tokens this period
    spent_micro_usd: int = 0


class Local:
    """Limits of one replica, kept in memory by client name and credential id (a reload keeps the counts)."""

    def __init__(self) -> None:
        self.usage: dict[str, _Usage] = {}
        self.credentials: dict[str, _Usage] = {}

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
                usage.period, usage.spent, usage.spent_micro_usd = current, 0, 0
            tokens, micro_usd = budget_limits(budget)
            if (tokens and usage.spent >= tokens) or (micro_usd and usage.spent_micro_usd >= micro_usd):
                return Verdict(False, left, "budget")
        if limit is not None and limit.max_parallel is not None:
            if usage.in_flight >= limit.max_parallel:
                return Verdict(False, 1, "max-parallel")
            usage.in_flight += 1
        usage.requests.add(second, 1)
        return ALLOWED

    def settle(self, client: Client, verdict: Verdict, tokens: int, micro_usd: int = 0) -> None:
        if not client.limited:  # nothing of it is checked here (Redis keeps every key's usage for its status)
            return
        usage = self.usage.setdefault(client.name, _Usage())
        limit = client.rate_limit
        if limit is not None and limit.max_parallel is not None:
            usage.in_flight = max(0, usage.in_flight - 1)
        if tokens and limit is not None and limit.tpm is not None:  # a window nothing reads would only grow
            usage.tokens.add(int(time.time()), tokens)
        usage.spent += tokens
        usage.spent_micro_usd += micro_usd

    async def spent(self, client: Client) -> tuple[int, int] | None:
        if client.budget is None:
            return None
        usage = self.usage.get(client.name)
        if usage is None or usage.period != period(client.budget, time.time())[0]:
            return 0, 0
        return usage.spent, usage.spent_micro_usd

    async def reserve(self, credential: Credential) -> float:
        """0 when the credential takes one more request now (counted), else the seconds until it may."""
        limit, second = credential.rate_limit, int(time.time())
        usage = self.credentials.setdefault(credential.id, _Usage())
        if limit is not None and limit.rpm is not None and usage.requests.used(second) >= limit.rpm:
            return usage.requests.retry_after(second)
        if limit is not None and limit.tpm is not None and usage.tokens.used(second) >= limit.tpm:
            return usage.tokens.retry_after(second)
        usage.requests.add(second, 1)
        return 0.0

    def spend(self, credential: Credential, tokens: int) -> None:  # only a credential with a tpm is spent
        self.credentials.setdefault(credential.id, _Usage()).tokens.add(int(time.time()), tokens)

    async def flush(self) -> None:  # every count is in place already
        return None

    async def close(self) -> None:
        return None


# -- Redis ----------------------------------------------------------------------------------------------

# A window (requests or tokens over the last minute) is a hash: one field per second with its amount, 'sum' (the
# total of the seconds held) and 'from' (no second before it is held). A check reads the two and subtracts each
# second leaving the minute once, as 'from' passes it: O(1) work however busy the minute was (scanning every second
# cost ~180 us of Redis' single thread per check at a steady load). Time is Redis' own, so replicas' clocks do not
# matter.
_WINDOW = """
local t = redis.call('TIME')
local second = tonumber(t[1])
local now = second + tonumber(t[2]) / 1000000
local function rebuild(key)
  local total, from = 0, second
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    local at = tonumber(all[i])
    if at then
      if at <= second - 60 then
        redis.call('HDEL', key, all[i])
      else
        total = total + tonumber(all[i + 1])
        if at < from then from = at end
      end
    end
  end
  redis.call('HSET', key, 'sum', total, 'from', from)
  return total, from
end
local function used(key)
  local head = redis.call('HMGET', key, 'sum', 'from')
  local total, from = tonumber(head[1]), tonumber(head[2])
  if not total or not from then return 0, second end
  if from < second - 120 then return rebuild(key) end  -- unread for over a minute: fewer calls than the walk
  local start = from
  while from <= second - 60 do
    local amount = redis.call('HGET', key, from)
    if amount then
      total = total - tonumber(amount)
      redis.call('HDEL', key, from)
    end
    from = from + 1
  end
  if from ~= start then redis.call('HSET', key, 'sum', total, 'from', from) end
  return total, from
end
local function wait(key, from)  -- seconds until the oldest second held leaves the minute
  while from < second and redis.call('HEXISTS', key, from) == 0 do from = from + 1 end
  return math.max(1, from + 60 - second)
end
local function add(key, amount)
  if redis.call('HINCRBY', key, second, amount) == amount then  -- a new second: the key outlives it by a minute
    redis.call('HSETNX', key, 'from', second)
    redis.call('EXPIRE', key, 61)
  end
  redis.call('HINCRBY', key, 'sum', amount)
end
"""

# A client's admission. KEYS: requests, tokens, in-flight, budget, spend. ARGV: rpm, tpm, max-parallel, budget
# tokens, budget seconds left, lease seconds, ticket, budget micro-dollars (a limit of 0 is not set).
_ADMIT = Script(
    _WINDOW
    + """
local rpm, tpm, parallel, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if rpm > 0 then
  local n, from = used(KEYS[1])
  if n >= rpm then return {0, wait(KEYS[1], from), 'rpm'} end
end
if tpm > 0 then
  local n, from = used(KEYS[2])
  if n >= tpm then return {0, wait(KEYS[2], from), 'tpm'} end
end
if budget > 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= budget then
  return {0, tonumber(ARGV[5]), 'budget'}
end
local dollars = tonumber(ARGV[8])
if dollars > 0 and tonumber(redis.call('GET', KEYS[5]) or '0') >= dollars then
  return {0, tonumber(ARGV[5]), 'budget'}
end
if parallel > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= parallel then return {0, 1, 'max-parallel'} end
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[6]), ARGV[7])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
end
if rpm > 0 then add(KEYS[1], 1) end
return {1, 0, ''}
"""
)

# A credential's reservation: 0, or the seconds until it may take a request. KEYS: its requests, tokens. ARGV: its
# rpm, tpm (0: not set).
_RESERVE = Script(
    _WINDOW
    + """
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
if rpm > 0 then
  local n, from = used(KEYS[1])
  if n >= rpm then return wait(KEYS[1], from) end
end
if tpm > 0 then
  local n, from = used(KEYS[2])
  if n >= tpm then return wait(KEYS[2], from) end
end
add(KEYS[1], 1)
return 0
"""
)

# KEYS: tokens, in-flight, period tokens, period spend. ARGV: tokens, micro-dollars, period seconds left, count
# tokens against tpm (1/0), then the max-parallel tickets to release. One call settles every answer a client had
# since the last flush.
_SETTLE = Script(
    _WINDOW
    + """
local tokens, dollars, left = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if #ARGV > 4 then redis.call('ZREM', KEYS[2], unpack(ARGV, 5)) end
if tokens > 0 and ARGV[4] == '1' then add(KEYS[1], tokens) end
if tokens > 0 then
  redis.call('INCRBY', KEYS[3], tokens)
  redis.call('EXPIRE', KEYS[3], left + 3600)
end
if dollars > 0 then
  redis.call('INCRBY', KEYS[4], dollars)
  redis.call('EXPIRE', KEYS[4], left + 3600)
end
return 1
"""
)


# KEYS: a credential's tokens. ARGV: tokens.
_SPEND = Script(_WINDOW + "add(KEYS[1], tonumber(ARGV[1])) return 1")


def _credential_limits(credential: Credential) -> tuple[int, int]:
    limit = credential.rate_limit
    return ((limit.rpm or 0) if limit else 0, (limit.tpm or 0) if limit else 0)


@functools.lru_cache(maxsize=4096)  # asked on every request: the strings are built once
def _credential_keys(credential_id: str) -> tuple[str, str]:
    base = f"cliproxy:credential:{{{credential_id}}}"
    return f"{base}:rpm", f"{base}:tpm"


@functools.lru_cache(maxsize=4096)
def _keys(client_name: str, budget_period: str) -> tuple[str, str, str, str, str]:
    """One hash tag per client: a Redis Cluster keeps all of a client's counters on one shard."""
    base = f"cliproxy:{{{client_name}}}"
    return (f"{base}:rpm", f"{base}:tpm", f"{base}:in-flight", budget_key(client_name, budget_period),
            spend_key(client_name, budget_period))  # fmt: skip


@dataclass
class _Tally:
    """What a client's answers used since the last flush, settled by one script call."""

    client: Client
    tokens: int = 0
    micro_usd: int = 0
    tickets: list[str] = field(default_factory=list)


class Shared:
    """Limits held in Redis, one for every replica that names it.

    Admissions and credential reservations go out on one auto-pipelined connection (a Cluster keeps redis-py's
    per-command path). Settles and credential spends are summed per client and per credential and flushed every
    ``FLUSH`` seconds, as one script call each; an answer that frees a max-parallel slot flushes at once.
    """

    FLUSH = 0.1

    def __init__(self, settings: Redis, outages: Counter) -> None:
        self.settings = settings
        self.outages = outages
        self.redis = connect(settings, socket_timeout=settings.timeout)
        self.pipe = None if isinstance(self.redis, RedisCluster) else AutoPipeline(self.redis, settings.timeout)
        self.down_until = 0.0  # monotonic time before which Redis is not tried again
        self.backoff = 0.0  # 0: reachable
        self.tallies: dict[str, _Tally] = {}
        self.spends: dict[str, tuple[Credential, int]] = {}
        self.flush_at: asyncio.Handle | None = None
        self.flush_soon = False  # the flush is due on the loop's next turn
        self.flushing: set[asyncio.Task[None]] = set()

    def admit(self, client: Client) -> Coroutine[Any, Any, Verdict]:
        """The admission, written to Redis at once (on one server) and awaited when the proxy needs it."""
        keys, argv = self._admission(client)
        return self._verdict(self._call(_ADMIT, keys, argv), argv[6])

    def _admission(self, client: Client) -> tuple[tuple[str, ...], tuple[int | str, ...]]:
        limit, budget = client.rate_limit, client.budget
        current, left = period(budget, time.time())
        ticket = os.urandom(8).hex() if limit is not None and limit.max_parallel else ""
        tokens, micro_usd = budget_limits(budget)
        argv = (
            (limit.rpm or 0) if limit else 0, (limit.tpm or 0) if limit else 0,
            (limit.max_parallel or 0) if limit else 0, tokens, left, LEASE, ticket, micro_usd,
        )  # fmt: skip
        return _keys(client.name, current), argv

    async def _verdict(self, asked: Awaitable[Any], ticket: Any) -> Verdict:
        answer = await asked
        if answer is None:
            allowed = self._fallback()
            return Verdict(allowed, 1, "" if allowed else "unavailable", counted=False)
        allowed, retry_after, refused = answer
        return Verdict(bool(allowed), int(retry_after), refused.decode() if isinstance(refused, bytes) else refused,
                       str(ticket))  # fmt: skip

    def settle(self, client: Client, verdict: Verdict, tokens: int, micro_usd: int = 0) -> None:
        if not verdict.counted:
            return
        tally = self.tallies.get(client.name)
        if tally is None:
            tally = self.tallies[client.name] = _Tally(client)
        tally.client = client  # the newest rules (a reload may have changed its tpm)
        tally.tokens += tokens
        tally.micro_usd += micro_usd
        if verdict.ticket:
            tally.tickets.append(verdict.ticket)
        self._schedule(0.0 if verdict.ticket else self.FLUSH)

    def spend(self, credential: Credential, tokens: int) -> None:
        _, before = self.spends.get(credential.id, (credential, 0))
        self.spends[credential.id] = (credential, before + tokens)
        self._schedule(self.FLUSH)

    def _schedule(self, delay: float) -> None:
        if self.flush_at is not None and (delay or self.flush_soon):
            return
        loop = asyncio.get_running_loop()  # after the return most calls take: on 3.11 each costs a getpid()
        if self.flush_at is not None:
            self.flush_at.cancel()
        self.flush_soon = not delay
        self.flush_at = loop.call_later(delay, self._flush) if delay else loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_at = None
        tallies, self.tallies = self.tallies, {}
        spends, self.spends = self.spends, {}
        task = asyncio.get_running_loop().create_task(self._send(tallies, spends))
        self.flushing.add(task)
        task.add_done_callback(self.flushing.discard)

    async def _send(self, tallies: dict[str, _Tally], spends: dict[str, tuple[Credential, int]]) -> None:
        now = time.time()
        calls = []
        for tally in tallies.values():
            client = tally.client
            current, left = period(client.budget, now)
            tokens_key, in_flight, used, spent = _keys(client.name, current)[1:]
            counts = int(client.rate_limit is not None and client.rate_limit.tpm is not None)
            argv = (tally.tokens, tally.micro_usd, left, counts, *tally.tickets)
            calls.append(self._call(_SETTLE, (tokens_key, in_flight, used, spent), argv))
        for credential, tokens in spends.values():
            calls.append(self._call(_SPEND, _credential_keys(credential.id)[1:], (tokens,)))
        await asyncio.gather(*calls)

    async def spent(self, client: Client) -> tuple[int, int] | None:
        """The budget period's tokens and micro-dollars across every replica (None: no budget, or Redis is down)."""
        if client.budget is None or (self.backoff and time.monotonic() < self.down_until):
            return None
        *_, tokens_key, spend_key = _keys(client.name, period(client.budget, time.time())[0])
        try:
            async with asyncio.timeout(self.settings.timeout):
                tokens, micro_usd = await self.redis.mget(tokens_key, spend_key)
        except UNAVAILABLE:
            return None
        return int(tokens or 0), int(micro_usd or 0)

    async def reserve(self, credential: Credential) -> float:
        answer = await self._call(_RESERVE, _credential_keys(credential.id), _credential_limits(credential))
        if answer is None:
            return 0.0 if self._fallback() else 1.0
        return float(answer)

    def _fallback(self) -> bool:
        """Whether a check Redis did not answer is allowed (``on-error``), counted."""
        allowed = self.settings.on_error == "allow"
        self.outages.labels("allowed" if allowed else "denied").inc()
        return allowed

    def _call(self, script: Script, keys: tuple[str, ...], argv: tuple[Any, ...]) -> Coroutine[Any, Any, Any]:
        """The script's answer, or None when Redis gave none within the timeout (or is backing off). On one server
        the script is written now, so a caller may go on and await its answer later."""
        if self.backoff and time.monotonic() < self.down_until:
            return _unanswered()
        if self.pipe is not None:  # its watchdog bounds the wait
            return self._answer(script(self.pipe, keys, argv))
        return self._answer(self._on_cluster(script, keys, argv))

    async def _answer(self, asked: Awaitable[Any]) -> Any:
        try:
            answer = await asked
        except UNAVAILABLE as error:  # TimeoutError (the watchdog's) is an OSError
            return self._down(error)
        if self.backoff:
            log.warning("redis reachable again; limits are shared again")
            self.backoff = 0.0
        return answer

    async def _on_cluster(self, script: Script, keys: tuple[str, ...], argv: tuple[Any, ...]) -> Any:
        try:
            async with asyncio.timeout(self.settings.timeout):
                return await self.redis.evalsha(script.sha, len(keys), *keys, *argv)
        except NoScriptError:  # a shard that does not know the script yet
            async with asyncio.timeout(self.settings.timeout):
                return await self.redis.eval(script.source, len(keys), *keys, *argv)

    def _down(self, error: BaseException) -> None:
        """Back off from Redis; the checks that were waiting on it together count as one failure."""
        now = time.monotonic()
        if now < self.down_until:
            return
        if not self.backoff:
            log.warning("redis unreachable (%s); limits apply on-error=%s until it is back",
                        type(error).__name__, self.settings.on_error)  # fmt: skip
        self.backoff = min(_BACKOFF_MAX, self.backoff * 2 or _BACKOFF_FIRST)
        self.down_until = now + self.backoff

    async def flush(self) -> None:
        """Send what is tallied now, and wait until every settle sent is answered."""
        if self.flush_at is not None:
            self.flush_at.cancel()
            self._flush()
        await asyncio.gather(*self.flushing, return_exceptions=True)

    async def close(self) -> None:
        """Settle what is still tallied, then close."""
        await self.flush()
        if self.pipe is not None:
            await self.pipe.close()
        await self.redis.aclose()


class Limits:
    """The proxy's limit engine for its config: Redis when ``redis`` is set (or the deployment names one in
    ``CLIPROXY_REDIS_URL``, read once at start), else in process.

    Settling runs in background tasks, so an answer never waits for it. With Redis, the verdict rests credentials
    get are shared too: ``share`` publishes this replica's, and the feed has ``health`` adopt the others'.
    """

    def __init__(self, registry: CollectorRegistry, health: Health | None = None) -> None:
        self.outages = Counter(
            "cliproxy_limit_store_unavailable", "Limit checks decided by redis.on-error, by outcome",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.settings: Redis | None = None
        self.engine: Engine = Local()
        self.health = health
        self.feed: CooldownFeed | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.default = redis_from_env()
        self.pending: set[asyncio.Task[None]] = set()

    def configure(self, settings: Redis | None) -> None:
        """Switch engines when the ``redis`` block changed; the same block keeps the engine and its counts."""
        settings = settings or self.default
        if settings == self.settings:
            return
        old, self.settings = self.engine, settings
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None
        self.feed = None
        if settings is None:
            self.engine = Local()
        else:
            self.engine = Shared(settings, self.outages)
            if self.health is not None:
                self.feed = CooldownFeed(settings, self.health)
        self._background(old.close())
        self.start()

    def start(self) -> None:
        """Follow the other replicas' cooldowns, from the first moment a loop runs (configure may come before)."""
        if self.feed is None or self.watcher is not None:
            return
        try:
            self.watcher = asyncio.get_running_loop().create_task(self.feed.watch())
        except RuntimeError:
            return

    def share(self, credential_id: str, model: str, seconds: float, reason: str) -> None:
        """Publish a verdict rest of this replica's to the others, in the background."""
        if self.feed is not None:
            self._background(self.feed.publish(credential_id, model, seconds, reason))

    def admit(self, client: Client) -> Awaitable[Verdict]:
        return self.engine.admit(client)

    def admission(self, client: Client | None) -> Awaitable[Verdict] | None:
        """A limited client's admission for a request just arrived: with Redis, asked at once and awaited before
        the first upstream attempt, so its round trip runs while the body is read and routed."""
        return self.engine.admit(client) if client is not None and client.limited else None

    async def forgo(self, client: Client | None, admission: Awaitable[Verdict] | None) -> None:
        """An admission asked for a request that ended before any upstream attempt (a 4xx, every credential
        resting): the request counts against the rpm it was asked for, and the max-parallel slot it may hold is
        given back (before the client hears the answer, so its next request finds the slot free)."""
        if client is None or admission is None:
            return
        verdict = await admission
        if verdict.allowed:
            self.settle(client, verdict, 0)
            if verdict.ticket:  # given back in Redis before the answer goes: the next request may need the slot
                await self.flush()

    def forgo_soon(self, client: Client | None, admission: Awaitable[Verdict] | None) -> None:
        """``forgo`` in the background, for a request ended by an error raised or the client gone."""
        if client is not None and admission is not None:
            self._background(self.forgo(client, admission))

    async def flush(self) -> None:
        """Wait until what was settled so far is counted (with Redis, sent at once and answered)."""
        await self.engine.flush()

    def settle(self, client: Client, verdict: Verdict, tokens: int, micro_usd: int = 0) -> None:
        """Count an answer's tokens and cost against its client (with Redis, flushed in the background)."""
        self.engine.settle(client, verdict, tokens, micro_usd)

    async def spent(self, client: Client) -> tuple[int, int] | None:
        """The current budget period's (tokens, micro-dollars), when the client has a budget and it is known."""
        return await self.engine.spent(client)

    async def reserve(self, credential: Credential) -> float:
        """0 when the credential may take this request (counted against its rpm), else the seconds until it may."""
        return 0.0 if credential.rate_limit is None else await self.engine.reserve(credential)

    def spend(self, credential: Credential, tokens: int) -> None:
        """Count an answer's tokens against its credential's tpm, in the background."""
        limit = credential.rate_limit
        if tokens and limit is not None and limit.tpm is not None:
            self.engine.spend(credential, tokens)

    def _background(self, work: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # configured before the loop runs: the engine replaced never ran, nothing to close
            work.close()
            return
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def close(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            await asyncio.gather(self.watcher, return_exceptions=True)
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
        await self.engine.close()


async def _unanswered() -> None:
    """A check not asked of Redis while it backs off: decided by ``on-error``."""
    return None
