"""The limits' auto-pipelined Redis connection, against a REAL redis-server: every caller gets its own reply,
an error reply stays its caller's, and a restarted server is reconnected to (and taught the script again)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from cliproxy_proxy.autopipe import AutoPipeline, Script

from ..support.redis_server import RedisServer


async def test_concurrent_callers_each_get_their_own_reply(redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_server.url)
    pipe = AutoPipeline(redis, 5.0)
    try:
        await pipe.execute("SET", "text", "not a number")
        calls = [pipe.execute("ECHO", f"call-{i}") if i % 7 else pipe.execute("INCR", "text") for i in range(300)]
        replies = await asyncio.gather(*calls, return_exceptions=True)
        for i, reply in enumerate(replies):
            if i % 7:
                assert reply == f"call-{i}".encode()
            else:  # the error reply is raised to its own caller, and the replies after it stay in step
                assert isinstance(reply, ResponseError) and "not an integer" in str(reply)
        clients = await redis.client_list()
        assert len(clients) == 2  # the pipeline's one connection, and this check's own
    finally:
        await pipe.close()
        await redis.aclose()


async def test_a_restarted_server_is_reconnected_to_and_taught_the_script_again(redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_server.url)
    pipe = AutoPipeline(redis, 5.0)
    script = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    try:
        assert await script(pipe, ("n",), (2,)) == 2
        redis_server.kill()
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(script(pipe, ("n",), (3,)), 5)
        redis_server.start()  # empty: no data, no scripts
        assert await asyncio.wait_for(script(pipe, ("n",), (5,)), 5) == 5  # NOSCRIPT, then EVAL
        assert await asyncio.wait_for(script(pipe, ("n",), (1,)), 5) == 6
    finally:
        await pipe.close()
        await redis.aclose()
