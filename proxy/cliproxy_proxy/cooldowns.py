"""Verdict cooldowns shared between replicas through Redis.

A replica that rests a credential for a provider's verdict (429, 401/402/403, a 404 naming the model) writes the
rest into one Redis hash (field: credential id and model; value: until when, on Redis' clock) and publishes it on
a channel. Every replica follows the channel and adopts what it hears, so the others bench the credential as soon
as the message arrives, with no extra round trip on any request. A periodic resync of the hash is the fallback
for messages missed while a subscriber was reconnecting; and each time the feed subscribes again (Redis back,
maybe empty), it announces the rests this replica holds, so what was decided during an outage is shared after it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster

from .config import Redis
from .health import Health
from .store import UNAVAILABLE, connect

log = logging.getLogger("cliproxy.cooldowns")

CHANNEL = "cliproxy:cooldowns"
KEY = "cliproxy:{cooldowns}"  # one hash, so one Cluster slot
RESYNC = 5.0  # seconds between reads of the whole hash
LONGEST = 86400.0  # seconds: a rest heard from Redis lasts at most a day here, whatever the message says
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0

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
    """Publishes this replica's verdict rests and adopts the other replicas' ones.

    Everything goes over the subscription's own client, made afresh at each (re)subscription: no pooled
    connection from before a Redis restart fails a publish. While not subscribed, a rest stays this replica's
    until the next subscription announces it.
    """

    def __init__(self, settings: Redis, health: Health) -> None:
        self.settings = settings
        self.health = health
        self.client: Any = None  # while subscribed
        self.publish_script: Any = None

    async def publish(self, credential_id: str, model: str, seconds: float, reason: str) -> None:
        """Write and announce one rest, within ``redis.timeout``."""
        if self.client is None:
            return
        field = orjson.dumps([credential_id, model])
        message = orjson.dumps([credential_id, model, seconds, reason])
        argv = (field, math.ceil(seconds * 1000), reason, CHANNEL, message)
        try:
            async with asyncio.timeout(self.settings.timeout):
                await self.publish_script(keys=(KEY,), args=argv)
        except UNAVAILABLE:  # TimeoutError too
            return

    async def announce(self) -> None:
        """Publish every verdict rest this replica holds (after Redis came back, it may hold none of them)."""
        for rest in self.health.verdict_rests():
            await self.publish(*rest)

    async def resync(self) -> None:
        """Adopt every rest the hash holds, timed on Redis' clock (the hash's ends are on it)."""
        async with asyncio.timeout(self.settings.timeout):
            (seconds, micros), rests = await self.client.time(), await self.client.hgetall(KEY)
        now = seconds * 1000 + micros // 1000
        for field, value in rests.items():
            until, _, reason = value.partition(b" ")
            try:
                credential_id, model = orjson.loads(field)
                left = (int(until) - now) / 1000
            except (orjson.JSONDecodeError, ValueError, TypeError):
                continue
            self._adopt([credential_id, model, left, reason.decode(errors="replace")])

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
                self.health.adopt(credential_id, model, min(float(seconds), LONGEST), reason)

    async def watch(self) -> None:
        """Follow the channel for ever: announce and resync on each (re)subscription, resync every ``RESYNC`` s."""
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
                    self.client, self.publish_script = subscriber, subscriber.register_script(_PUBLISH)
                    await self.announce()
                    backoff, resync_at = 0.0, 0.0
                    while True:
                        if time.monotonic() >= resync_at:
                            await self.resync()
                            resync_at = time.monotonic() + RESYNC
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is not None:
                            self._received(message["data"])
            except UNAVAILABLE as error:
                if not backoff:
                    log.warning("cooldown feed lost Redis (%s); resubscribing with backoff", type(error).__name__)
                backoff = min(_BACKOFF_MAX, backoff * 2 or _BACKOFF_FIRST)
            except Exception:  # anything else is a bug; it must not end the sharing for good
                log.exception("cooldown feed failed; resubscribing in %s s", _BACKOFF_MAX)
                backoff = _BACKOFF_MAX
            finally:
                self.client = None
                await subscriber.aclose()
            await asyncio.sleep(backoff)
