"""Resource bounds: Retry-After, slow clients, clients that leave, and the memory a large body costs."""

from __future__ import annotations

import openai
import pytest

from cliproxy_proxy.demo_upstream import Fault
from cliproxy_proxy.forward import retry_after_seconds

from ..conftest import FakeProvider, base_config, compat_block

MESSAGES = [{"role": "user", "content": "ping"}]


@pytest.mark.parametrize(
    ("header", "expected"),
    [("100000000", 1800.0), ("inf", 1800.0), ("1e400", 1800.0), ("-5", 0.0), ("nan", None), ("soon", None),
     ("Fri, 31 Dec 9999 23:59:59 GMT", 1800.0), ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0), ("12.5", 12.5)],
)  # fmt: skip
def test_retry_after_is_capped(header: str, expected: float | None) -> None:
    assert retry_after_seconds(header, 1800.0) == expected


async def test_a_huge_retry_after_benches_a_credential_no_longer_than_quota_max(
    provider: FakeProvider, start_proxy
) -> None:
    block = compat_block(provider.url, keys=("key-a",))
    running = await start_proxy(base_config(**{"openai-compatibility": [block], "cooldowns": {"quota-max": 120}}))
    provider.state.fail_next("key-a", Fault(status=429, headers={"Retry-After": "100000000"}))
    with pytest.raises(openai.RateLimitError) as caught:
        await running.client().chat.completions.create(model="small", messages=MESSAGES)
    assert caught.value.response.headers["Retry-After"] == "120"
    health = running.proxy.health
    (cooldown,) = health.cooldowns.values()
    assert 0 < cooldown.until - health.clock() <= 120
