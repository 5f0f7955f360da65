"""Live reload: file and ConfigMap-volume changes, refused configs, key rotation, zero failures under load."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import openai
import yaml

from cliproxy_proxy.__main__ import load_app
from cliproxy_proxy.app import PROXY, RELOADER
from cliproxy_proxy.demo_upstream import Fault
from cliproxy_proxy.loader import ConfigSource

from ..support.proxy import CLIENT_KEY, FakeProvider, base_config, compat_block, eventually

MESSAGES = [{"role": "user", "content": "ping"}]


async def test_file_change_goes_live(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    assert running.proxy.generation == 1
    running.rewrite(base_config(**{"openai-compatibility": [compat_block(provider.url, models=[("up-large", "big")])]}))
    await eventually(lambda: "big" in running.proxy.runtime.routes)
    assert running.proxy.generation == 2
    completion = await running.client().chat.completions.create(model="big", messages=MESSAGES)
    assert completion.model == "big"
    assert provider.received[-1].body["model"] == "up-large"


async def test_invalid_config_is_refused_and_the_last_good_one_serves(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    running.config_path.write_text("openai-compatibility:\n  - name: fake\n    base-url: not-a-url\n")
    reloader = running.app[RELOADER]
    await eventually(lambda: reloader.last_error != "")
    assert "openai-compatibility[0].base-url: must be an absolute" in reloader.last_error
    completion = await running.client().chat.completions.create(model="small", messages=MESSAGES)
    assert completion.choices[0].message.content == "echo: ping"
    assert running.proxy.generation == 1
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{running.url}/metrics") as response:
            assert 'cliproxy_config_reloads_total{result="failure"} 1.0' in await response.text()
        async with session.post(
            f"{running.url}/-/reload", headers={"Authorization": f"Bearer {CLIENT_KEY}"}
        ) as response:
            assert response.status == 422
            assert "base-url" in (await response.json())["error"]
    running.config_path.write_text("port: [")  # broken YAML too
    await eventually(lambda: "not valid YAML" in reloader.last_error)
    assert running.proxy.generation == 1


async def test_configmap_volume_symlink_swap_and_secret_rotation(
    provider: FakeProvider, aiohttp_server, tmp_path: Path
) -> None:
    config_dir, secrets_dir = tmp_path / "config", tmp_path / "secrets"
    for volume in (config_dir, secrets_dir):
        volume.mkdir()

    def publish(volume: Path, files: dict[str, str], stamp: str) -> None:
        """What the kubelet's AtomicWriter does: a new timestamped dir, then ..data renamed over."""
        data = volume / f"..{stamp}"
        data.mkdir()
        for name, content in files.items():
            (data / name).write_text(content)
            link = volume / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        tmp_link = volume / "..data_tmp"
        tmp_link.symlink_to(data.name)
        os.replace(tmp_link, volume / "..data")

    block = {"name": "fake", "base-url": provider.url, "api-key-entries": [{"api-key-file": "fake-key"}],
             "models": [{"name": "up-small", "alias": "small"}]}  # fmt: skip
    config = {"api-keys-file": "client-keys", "openai-compatibility": [block]}
    publish(config_dir, {"config.yaml": yaml.safe_dump(config)}, "v1")
    publish(secrets_dir, {"fake-key": "key-a", "client-keys": CLIENT_KEY}, "v1")
    app = load_app(ConfigSource(config_dir, secrets_dir), reload_interval=0.05)
    server = await aiohttp_server(app)
    url = str(server.make_url("/v1/chat/completions"))
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"model": "small", "messages": MESSAGES}, headers=headers) as response:
            assert response.status == 200
        assert provider.received[-1].key == "key-a"

        publish(secrets_dir, {"fake-key": "key-b", "client-keys": CLIENT_KEY}, "v2")  # key rotation
        await eventually(lambda: app[PROXY].generation == 2)
        async with session.post(url, json={"model": "small", "messages": MESSAGES}, headers=headers) as response:
            assert response.status == 200
        assert provider.received[-1].key == "key-b"

        block["models"] = [{"name": "up-large", "alias": "small"}]
        publish(config_dir, {"config.yaml": yaml.safe_dump(config)}, "v2")
        await eventually(lambda: app[PROXY].generation == 3)
        async with session.post(url, json={"model": "small", "messages": MESSAGES}, headers=headers) as response:
            assert response.status == 200
        assert provider.received[-1].body["model"] == "up-large"


async def test_reload_under_concurrent_load_fails_no_request(provider: FakeProvider, start_proxy) -> None:
    configs = [
        base_config(**{"openai-compatibility": [compat_block(provider.url, keys=("key-a",))]}),
        base_config(**{"openai-compatibility": [compat_block(provider.url, keys=("key-b", "key-c"),
                                                              models=[("up-large", "small")])]}),
    ]  # fmt: skip
    running = await start_proxy(configs[0])
    client = running.client()

    done = asyncio.Event()
    outcomes: list[str] = []

    async def worker(stream: bool) -> None:
        """Sends requests back to back until the reloads are over, recording every answer."""
        while not done.is_set():
            try:
                if stream:
                    chunks = await client.chat.completions.create(model="small", messages=MESSAGES, stream=True)
                    outcomes.append("".join([c.choices[0].delta.content or "" async for c in chunks if c.choices]))
                else:
                    completion = await client.chat.completions.create(model="small", messages=MESSAGES)
                    outcomes.append(completion.choices[0].message.content or "")
            except openai.APIError as error:  # recorded, so the assertion below shows what failed
                outcomes.append(f"failed: {error}")

    async def flip() -> None:
        for generation in range(2, 8):
            running.rewrite(configs[(generation + 1) % 2])  # alternate, starting from the other one
            await eventually(lambda g=generation: running.proxy.generation == g)  # type: ignore[misc]
            await asyncio.sleep(0.05)
        done.set()

    await asyncio.gather(*(worker(stream=i % 2 == 1) for i in range(16)), flip())
    assert len(outcomes) > 100
    assert [o for o in outcomes if o != "echo: ping"] == []
    assert {r.key for r in provider.received} == {"key-a", "key-b", "key-c"}


async def test_in_flight_stream_finishes_on_the_config_it_started_with(provider: FakeProvider, start_proxy) -> None:
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    provider.state.fail_next("*", Fault(first_byte_delay=0.3))
    stream = await running.client().chat.completions.create(model="small", messages=MESSAGES, stream=True)
    running.rewrite(base_config(**{"openai-compatibility": [compat_block(provider.url, models=[("up-large", "big")])]}))
    await eventually(lambda: "small" not in running.proxy.runtime.routes)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "echo: ping"
