"""Client auth on every route the app registers, path spellings that must not slip past it, and the admin surface."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cliproxy_proxy.__main__ import load_app
from cliproxy_proxy.app import PUBLIC_HANDLERS
from cliproxy_proxy.loader import ConfigSource
from cliproxy_proxy.translate import codec_for_path

from ..support.proxy import CLIENT_KEY, FakeProvider, base_config, compat_block, write_yaml

REMOTE = "203.0.113.9"  # a documentation address: any peer that is not loopback
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
BODY = orjson.dumps({"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
Served = Callable[..., Awaitable[tuple[web.Application, str]]]


@pytest.fixture
def serve(aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path) -> Served:
    """The proxy on a real socket; ``remote`` makes every peer look like that address (the one thing spoofed)."""

    async def start(
        config: dict[str, Any], *, remote: str | None = None, **options: Any
    ) -> tuple[web.Application, str]:
        path = tmp_path / "config.yaml"
        write_yaml(path, config)
        app = load_app(ConfigSource(path), 0.05, **options)
        if remote is not None:

            @web.middleware
            async def peer(request: web.Request, handler: Any) -> web.StreamResponse:
                return await handler(request.clone(remote=remote))

            app.middlewares.insert(0, peer)
        server = await aiohttp_server(app)
        return app, str(server.make_url("")).rstrip("/")

    return start


def registered(app: web.Application) -> list[tuple[str, str, bool]]:
    """(method, a concrete path, public) for every route the app registers: a new route is covered by itself.

    Public: the probes, and /metrics while it shares the main port (no metrics-port).
    """
    found = []
    for route in app.router.routes():
        assert route.resource is not None
        path = re.sub(r"\{tail[^}]*\}", "small:generateContent", route.resource.canonical)
        path = re.sub(r"\{[^}]+\}", "small", path)
        found.append((route.method, path, route.handler in PUBLIC_HANDLERS or path == "/metrics"))
    assert len(found) > 10
    return found


async def raw_request(url: str, method: str, target: str, headers: dict[str, str] | None = None,
                      body: bytes = b"") -> tuple[int, bytes]:  # fmt: skip
    """One request with the request target sent byte for byte as given: no client normalizes it first."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    fields = {"Host": f"{host}:{port}", "Connection": "close", "Content-Length": str(len(body)),
              "Content-Type": "application/json", **(headers or {})}  # fmt: skip
    lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    answer = await reader.read()
    writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


async def test_every_registered_route_needs_a_key_but_the_probes(provider: FakeProvider, serve: Served) -> None:
    app, url = await serve(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    public = set()
    async with aiohttp.ClientSession() as session:
        for method, path, is_public in registered(app):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Api-Key": "wrong"}):
                async with session.request(method, url + path, headers=headers, data=BODY) as response:
                    body = await response.read()
                if is_public:
                    assert response.status in (200, 503), (method, path)
                    public.add(path)
                    continue
                assert response.status == 401, (method, path, headers)
                code = "invalid_api_key" if headers else "missing_api_key"
                message = "Invalid API key." if headers else "Missing API key."
                expected = b"" if method == "HEAD" else codec_for_path(path).encode_error(401, message, code)
                assert body == expected, (method, path)
    assert public == {"/healthz", "/health", "/readyz", "/metrics"}
    assert provider.received == []


async def test_the_chat_alias_without_v1_needs_a_key(provider: FakeProvider, serve: Served) -> None:
    _, url = await serve(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    assert (await raw_request(url, "POST", "/chat/completions", body=BODY))[0] == 401
    status, _ = await raw_request(url, "POST", "/chat/completions", AUTH, BODY)
    assert status == 200 and len(provider.received) == 1


SPELLINGS = [
    "/CHAT/COMPLETIONS", "/Chat/Completions", "/V1/chat/completions", "//chat/completions", "//v1//chat/completions",
    "/chat/completions/", "/v1/chat/completions/", "/chat%2Fcompletions", "/%63hat/completions",
    "/v1%2Fchat%2Fcompletions", "/./chat/completions", "/healthz/../chat/completions", "/readyz/../v1/messages",
    "/healthz/%2e%2e/chat/completions", "/healthz%2F..%2Fchat%2Fcompletions", "/v1/models/../../chat/completions",
    "/healthz/..%2Fchat/completions", "/chat/completions?x=/healthz", "/chat/completions;/healthz",
    "/chat/completions%00", "/chat/completions%20", "http://127.0.0.1/chat/completions", "/healthz#/../chat",
    "/v1beta/models/small:generateContent", "/v1beta/models/..%2F..%2Fhealthz", "/metrics/../v1/responses",
]  # fmt: skip


async def test_no_spelling_of_a_path_reaches_the_upstream_without_a_key(provider: FakeProvider, serve: Served) -> None:
    _, url = await serve(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    for target in SPELLINGS:
        status, _ = await raw_request(url, "POST", target, body=BODY)
        assert status in (400, 401), target  # 400: a target aiohttp's parser refuses outright
    assert provider.received == []


async def test_without_client_keys_only_local_non_browser_callers_are_served(
    provider: FakeProvider, serve: Served
) -> None:
    config = {"openai-compatibility": [compat_block(provider.url)]}
    app, url = await serve(config, remote=REMOTE)
    async with aiohttp.ClientSession() as session:
        for method, path, is_public in registered(app):
            async with session.request(method, url + path, data=BODY) as response:
                assert (response.status in (200, 503)) if is_public else response.status == 403, (method, path)
    _, local = await serve(config)
    assert (await raw_request(local, "POST", "/v1/chat/completions", body=BODY))[0] == 200
    for browser in ({"Host": "rebound.attacker.example"}, {"Origin": "https://attacker.example"},
                    {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):  # fmt: skip
        status, body = await raw_request(local, "POST", "/v1/chat/completions", browser, BODY)
        assert status == 403 and b"unauthenticated_remote" in body, browser
    assert len(provider.received) == 1
    _, opened = await serve({**config, "allow-unauthenticated": True}, remote=REMOTE)
    assert (await raw_request(opened, "POST", "/chat/completions", body=BODY))[0] == 200


async def test_reload_needs_a_key_a_local_caller_and_no_browser(provider: FakeProvider, serve: Served) -> None:
    config = base_config(**{"openai-compatibility": [compat_block(provider.url)]})
    _, url = await serve(config)
    assert (await raw_request(url, "POST", "/-/reload"))[0] == 401
    assert (await raw_request(url, "POST", "/-/reload", AUTH))[0] == 200
    for browser in ({"Host": "rebound.attacker.example:8317"}, {"Origin": "http://attacker.example"},
                    {"Sec-Fetch-Site": "same-site"}):  # fmt: skip
        status, body = await raw_request(url, "POST", "/-/reload", {**AUTH, **browser})
        assert status == 403 and b"forbidden" in body, browser
    _, remote = await serve(config, remote=REMOTE)
    assert (await raw_request(remote, "POST", "/-/reload", AUTH))[0] == 403


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_metrics_on_their_own_port_leave_the_main_port_keyed(provider: FakeProvider, serve: Served) -> None:
    config = base_config(**{"openai-compatibility": [compat_block(provider.url)]})
    _, shared = await serve(config)
    assert (await raw_request(shared, "GET", "/metrics"))[0] == 200  # no metrics-port: as before, no key
    port = _free_port()
    _, url = await serve(config, host="127.0.0.1", metrics_port=port)
    assert (await raw_request(url, "GET", "/metrics"))[0] == 401
    assert (await raw_request(url, "GET", "/metrics", AUTH))[0] == 200
    status, body = await raw_request(f"http://127.0.0.1:{port}", "GET", "/metrics")
    assert status == 200 and b"cliproxy_config_generation" in body
    assert (await raw_request(f"http://127.0.0.1:{port}", "POST", "/v1/chat/completions", body=BODY))[0] == 404
