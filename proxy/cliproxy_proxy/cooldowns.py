"""Verdict cooldowns shared between replicas through Redis.

A replica that rests a credential for a provider's verdict (429, 401/402/403, a 404 naming the model) writes the
rest into one Redis hash (field: credential id and model; value: until when, on Redis' clock) and publishes it on
a channel. Every replica follows the channel and adopts what it hears, so the others bench the credential as soon
as the message arrives, with no extra round trip on any request. A periodic resync of the hash is the fallback
for messages missed while a subscriber was reconnecting.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from .config import Redis
from .health import Share
from .store import connect

log = logging.getLogger("cliproxy.cooldowns")

CHANNEL = "cliproxy:cooldowns"
KEY = "cliproxy:{cooldowns}"  # one hash, so one Cluster slot
RESYNC = 5.0  # seconds between reads of the whole hash
LONGEST = 86400.0  # seconds: a rest heard from Redis lasts at most a day here, whatever the message says
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0

Call = Callable[[Any, tuple[str, ...], tuple[Any, ...]], Awaitable[Any]]

# KEYS: the hash. ARGV: field, milliseconds, reason, channel, message. A longer rest already there wins; the
# rests that ended are dropped, so the hash holds only running ones (and expires with the longest).
_PUBLISH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(string.match(all[i + 1], '^%d+') or '0') <= now then redis.call('HDEL', KEYS[1], all[i]) end
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and tonumber(string.match(old, '^%d+')) >= now + ms then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d %s', now + ms, ARGV[3]))
if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], ms) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""


class CooldownFeed:
    """Publishes this replica's verdict rests and adopts the other replicas' ones."""

    def __init__(self, settings: Redis, redis: Any, call: Call, adopt: Share) -> None:
        self.settings = settings
        self.call = call  # the limit engine's: bounded by redis.timeout, backing off while Redis is down
        self.adopt = adopt
        self.redis = redis
        self.publish_script = redis.register_script(_PUBLISH)

    async def publish(self, credential_id: str, model: str, seconds: float, reason: str) -> None:
        field = orjson.dumps([credential_id, model])
        message = orjson.dumps([credential_id, model, seconds, reason])
        await self.call(self.publish_script, (KEY,), (field, math.ceil(seconds * 1000), reason, CHANNEL, message))

    async def resync(self) -> None:
        """Adopt every rest the hash holds, timed on Redis' clock (the hash's ends are on it)."""
        answer = await self.call(self._read, (KEY,), ())
        if answer is None:
            return
        (seconds, micros), rests = answer
        now = seconds * 1000 + micros // 1000
        for field, value in rests.items():
            until, _, reason = value.partition(b" ")
            try:
                credential_id, model = orjson.loads(field)
                left = (int(until) - now) / 1000
            except (orjson.JSONDecodeError, ValueError, TypeError):
                continue
            self._adopt([credential_id, model, left, reason.decode(errors="replace")])

    async def _read(self, keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        """Redis' time and the hash (two round trips every ``RESYNC`` s: a Cluster pipeline refuses TIME); called
        as a script is, through the engine's guard."""
        return await self.redis.time(), await self.redis.hgetall(keys[0])

    def _received(self, data: Any) -> None:
        try:
            self._adopt(orjson.loads(data))
        except orjson.JSONDecodeError:
            return

    def _adopt(self, rest: Any) -> None:
        """Adopt one rest; anything not shaped as this module writes it is ignored."""
        match rest:
            case [str() as credential_id, str() as model, int() | float() as seconds, str() as reason] if (
                math.isfinite(seconds) and seconds > 0
            ):
                self.adopt(credential_id, model, min(float(seconds), LONGEST), reason)

    async def watch(self) -> None:
        """Follow the channel for ever, resyncing on each (re)subscription and every ``RESYNC`` seconds."""
        backoff = 0.0
        while True:
            subscriber = connect(self.settings, socket_timeout=None)
            try:
                if isinstance(subscriber, RedisCluster):
                    await subscriber.initialize()  # its pubsub picks a node from the slot map, unread until then
                async with subscriber.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    if backoff:
                        log.warning("cooldown feed subscribed again")
                    backoff, resync_at = 0.0, 0.0
                    while True:
                        if time.monotonic() >= resync_at:
                            await self.resync()
                            resync_at = time.monotonic() + RESYNC
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is not None:
                            self._received(message["data"])
            except (RedisError, OSError) as error:
                if not backoff:
                    log.warning("cooldown feed lost Redis (%s); resubscribing with backoff", type(error).__name__)
                backoff = min(_BACKOFF_MAX, backoff * 2 or _BACKOFF_FIRST)
            except Exception:  # anything else is a bug; it must not end the sharing for good
                log.exception("cooldown feed failed; resubscribing in %s s", _BACKOFF_MAX)
                backoff = _BACKOFF_MAX
            finally:
                await subscriber.aclose()
            await asyncio.sleep(backoff)
