"""Fault injection at the issue's rates, on the DEFAULT config: failover must hold up, and no stream may lie.

The full load (6,000 requests) runs in ``make bench`` (bench/fault_bench.py); this is its fast version, with a
margin that the old one-5xx-benches-the-key-for-60-s behaviour failed by far (1.3 % and 4.7 % succeeded).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp.test_utils import TestServer

from ..conftest import CLIENT_KEY
from ..fakes.faulty_openai import FaultyUpstream
from ..support.fault_load import MODEL, drive, gateway_config, success_rate

REQUESTS = 240  # per kind: a few seconds; rates asserted with room for the RNG, not for a regression


async def test_default_config_survives_ten_percent_mixed_faults(
    aiohttp_server: Callable[..., Awaitable[TestServer]], start_proxy
) -> None:  # type: ignore[no-untyped-def]
    upstreams = [FaultyUpstream(f"sk-up-{i}", MODEL, rate=0.1, seed=i) for i in range(2)]
    servers = [await aiohttp_server(u.app()) for u in upstreams]
    config = gateway_config(
        CLIENT_KEY, [(str(s.make_url("/v1")), u.key) for s, u in zip(servers, upstreams, strict=True)]
    )
    running = await start_proxy(config)
    client = running.client()

    plain = await drive(client, REQUESTS, stream=False)
    streams = await drive(client, REQUESTS, stream=True)

    faults = sum(sum(v for k, v in u.outcomes.items() if k != "ok") for u in upstreams)
    assert faults >= REQUESTS * 2 * 0.05, "the upstreams did not fail as often as the load is meant to"
    assert success_rate(plain) >= 0.99, plain
    assert success_rate(streams) >= 0.9, streams
    assert streams["truncated"] == 0, streams  # a stream cut short ends with an error, never as if complete
    assert set(streams) <= {"ok", "stream_error"}, streams  # everything that could be hidden was
