"""A provider entry's own ``policy`` (how the operator renders a route's retry/timeout policy) governs only the
models of that entry; the top-level values still govern every other model."""

from __future__ import annotations

import openai
import pytest

from cliproxy_proxy.config import ConfigError, parse_config
from cliproxy_proxy.demo_upstream import Fault

from ..support.proxy import FakeProvider, base_config, compat_block

MESSAGES = [{"role": "user", "content": "ping"}]


def two_routes(provider: FakeProvider, policy: dict[str, object]) -> dict[str, object]:
    """Model "strict" under its own policy; model "small" under the top level. Both have two keys."""
    strict = compat_block(provider.url, keys=("key-a", "key-b"), models=(("up-small", "strict"),), name="strict",
                          policy=policy)  # fmt: skip
    loose = compat_block(provider.url, keys=("key-a", "key-b"))
    return base_config(**{"openai-compatibility": [strict, loose], "routing": {"strategy": "fill-first"}})


async def test_an_entrys_retry_policy_applies_to_its_models_only(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(two_routes(provider, {"request-retry": 0, "max-retry-credentials": 1}))
    provider.state.fail_next("key-a", Fault(status=503))
    with pytest.raises(openai.APIStatusError):  # one credential, no retry round: key-a's 503 is the answer
        await running.client().chat.completions.create(model="strict", messages=MESSAGES)
    assert [r.key for r in provider.received] == ["key-a"]

    provider.received.clear()
    running = await start_proxy(two_routes(provider, {"request-retry": 0, "max-retry-credentials": 1}))
    provider.state.fail_next("key-a", Fault(status=503))
    completion = await running.client().chat.completions.create(model="small", messages=MESSAGES)
    assert completion.choices[0].message.content == "echo: ping"  # the top level fails over to key-b
    assert [r.key for r in provider.received] == ["key-a", "key-b"]


async def test_an_entrys_read_timeout_applies_to_its_models_only(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(two_routes(provider, {"read-timeout": 0.2, "max-retry-credentials": 1,
                                                      "request-retry": 0}))  # fmt: skip
    provider.state.fail_next("*", Fault(delay=0.6))
    with pytest.raises(openai.InternalServerError) as caught:
        await running.client().chat.completions.create(model="strict", messages=MESSAGES)
    assert (caught.value.status_code, caught.value.code) == (504, "upstream_timeout")
    provider.state.fail_next("*", Fault(delay=0.6))
    completion = await running.client().chat.completions.create(model="small", messages=MESSAGES)
    assert completion.choices[0].message.content == "echo: ping"  # the top level's 600 s read timeout


@pytest.mark.parametrize("policy", [{"request-retry": 11}, {"read-timeout": 0}, {"retries": 1}, {"request-retry": "x"}])
def test_a_bad_entry_policy_is_a_config_error(provider: FakeProvider, policy: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        parse_config(two_routes(provider, policy))
