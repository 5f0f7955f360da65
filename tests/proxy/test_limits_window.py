"""The sliding minute the Redis limits count in, against a REAL redis-server: its O(1) bookkeeping (a running
sum, and seconds subtracted once as they leave) must give what a scan of every second of the last minute gives,
for any sequence of amounts added and reads made, over any gaps of time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from cliproxy_proxy import limits

from ..support.redis_server import RedisServer

# The window's Lua with Redis' clock replaced by ARGV[1], so a test can move time; ARGV[2] says what to do.
_CLOCKED = (
    limits._WINDOW.replace("local t = redis.call('TIME')", "local t = {ARGV[1], '0'}")
    + """
if ARGV[2] == 'add' then add(KEYS[1], tonumber(ARGV[3])) return {0, 0} end
local n, from = used(KEYS[1])
return {n, wait(KEYS[1], from)}
"""
)

#: (seconds passed since the step before, amount added: 0 reads the window instead)
steps = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 3), st.sampled_from([59, 60, 61]), st.integers(0, 70), st.integers(100, 400)),
        st.one_of(st.just(0), st.integers(1, 50)),
    ),
    min_size=1,
    max_size=60,
)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    with Redis.from_url(server.url) as client:
        yield client
    server.kill()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
def test_the_window_holds_what_a_scan_of_the_last_minute_holds(redis: Redis, steps: list[tuple[int, int]]) -> None:
    script = redis.register_script(_CLOCKED)
    redis.delete("window")
    second, added = 1_700_000_000, []
    for gap, amount in steps:
        second += gap
        if amount:
            script(keys=["window"], args=[second, "add", amount])
            added.append((second, amount))
            continue
        total, wait = script(keys=["window"], args=[second, "read"])
        inside = [(at, n) for at, n in added if at > second - limits.WINDOW]
        assert total == sum(n for _, n in inside)
        if inside:  # a refusal's Retry-After: until the oldest second held leaves the minute
            assert wait == max(1, min(at for at, _ in inside) + limits.WINDOW - second)
