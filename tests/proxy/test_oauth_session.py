"""Token lifecycle against a fake rotating OAuth server: single-flight refresh, write-back, adoption, failures.

Time is a fake clock shared by the session and the format; the server only counts and gates, so nothing here
depends on how fast a loaded machine runs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cliproxy_proxy.oauth.base import RefreshRejected, TokenError, TokenSet, refresh_once
from cliproxy_proxy.oauth.formats import OAuth2Format, StaticKeyFormat
from cliproxy_proxy.oauth.session import FileStore, MemoryStore, Session, pool_post
from cliproxy_proxy.upstream import Pool

LIFETIME = 2.0  # seconds a fake access token lives; the effective margin is 10 % of it


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeOAuth:
    """A token endpoint that rotates refresh tokens: a used or revoked refresh token gets ``invalid_grant``."""

    valid: set[str] = field(default_factory=set)
    calls: int = 0
    revoked: bool = False
    fail_next: int = 0
    gate: asyncio.Event | None = None  # when set, answers wait for it
    issued: list[str] = field(default_factory=list)  # every token string handed out, for the leak checks
    counter: itertools.count[int] = field(default_factory=itertools.count)
    url: str = ""

    def login(self) -> dict[str, Any]:
        """What a fresh login writes: tokens plus vendor fields this proxy does not know."""
        n = next(self.counter)
        access, refresh = f"at-secret-{n}-x9", f"rt-secret-{n}-y7"
        self.valid.add(refresh)
        self.issued += [access, refresh]
        return {"access_token": access, "refresh_token": refresh, "expires_in": LIFETIME}

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        form = await request.post()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            return web.json_response({"error": "temporarily_unavailable"}, status=503)
        token = form.get("refresh_token")
        if form.get("grant_type") != "refresh_token" or form.get("client_id") != "cli":
            return web.json_response({"error": "invalid_request"}, status=400)
        if self.revoked or token not in self.valid:
            return web.json_response({"error": "invalid_grant", "error_description": f"bad token {token}"}, status=400)
        self.valid.discard(str(token))
        return web.json_response(self.login())


@pytest.fixture
async def oauth(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> FakeOAuth:
    fake = FakeOAuth()
    app = web.Application()
    app.router.add_post("/oauth/token", fake.handle)
    server = await aiohttp_server(app)
    fake.url = str(server.make_url("/oauth/token"))
    return fake


@pytest.fixture
async def pool() -> Any:
    pool = Pool()
    yield pool
    pool.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def initial_file(oauth: FakeOAuth, clock: Clock) -> bytes:
    login = oauth.login()
    doc = {"vendor_profile": "arn:example", "access_token": login["access_token"],
           "refresh_token": login["refresh_token"], "expires_at": clock() + LIFETIME, "region": "eu-1"}  # fmt: skip
    return (json.dumps(doc, indent=4) + "\n").encode()


def make(oauth: FakeOAuth, pool: Pool, clock: Clock, store: Any, **options: Any) -> tuple[Session, OAuth2Format]:
    fmt = OAuth2Format("fake", oauth.url, "cli", clock=clock)
    return Session(fmt, store, pool_post(pool, connect_timeout=30, read_timeout=60), clock=clock, **options), fmt


def assert_no_secret(oauth: FakeOAuth, *texts: str) -> None:
    for text in texts:
        for secret in oauth.issued:
            assert secret not in text


async def test_single_flight_across_cycles_and_no_expired_token(oauth: FakeOAuth, pool: Pool, clock: Clock,
                                                                tmp_path: Path) -> None:  # fmt: skip
    path = tmp_path / "token.json"
    path.write_bytes(initial_file(oauth, clock))
    session, _ = make(oauth, pool, clock, FileStore(path))
    await session.load()
    assert session.refresh_at == pytest.approx(clock() + LIFETIME * 0.9)
    for cycle in range(1, 4):
        oauth.gate = asyncio.Event()
        old = session.access_token()
        clock.advance(session.refresh_at - clock() + 0.01)  # inside the margin, still valid
        await asyncio.gather(*(session.ensure_fresh() for _ in range(50)))  # nobody waits for the refresh
        assert session.state == "refreshing"
        assert session.access_token() == old and clock() < session.expires_at  # type: ignore[operator]

        clock.advance(session.expires_at - clock() + 0.01)  # type: ignore[operator]  # now expired
        waiting = [asyncio.ensure_future(session.ensure_fresh()) for _ in range(50)]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiting)  # callers with an expired token wait for the refresh
        oauth.gate.set()
        await asyncio.gather(*waiting)
        assert session.access_token() != old
        assert clock() < session.expires_at  # type: ignore[operator]
        assert oauth.calls == cycle and session.refresh_count == cycle
        assert session.state == "valid" and session.last_refresh == clock()
        await asyncio.gather(*(session.ensure_fresh() for _ in range(50)))  # fresh: no further refresh
        assert oauth.calls == cycle


async def test_write_back_atomic_same_format_unknown_fields(
    oauth: FakeOAuth, pool: Pool, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token.json"
    path.write_bytes(initial_file(oauth, clock))
    path.chmod(0o400)  # stricter than ours: kept
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        assert os.path.dirname(src) == str(tmp_path)  # same directory, so the rename is atomic
        assert json.loads(Path(src).read_bytes())["access_token"]  # complete before it becomes visible
        replaced.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    session, fmt = make(oauth, pool, clock, FileStore(path))
    await session.load()
    clock.advance(1.9)
    await session.ensure_fresh()
    assert session._task is not None
    await session._task
    assert replaced == [(replaced[0][0], str(path))]
    text = path.read_text()
    doc = json.loads(text)
    assert list(doc) == ["vendor_profile", "access_token", "refresh_token", "expires_at", "region"]
    assert doc["vendor_profile"] == "arn:example" and doc["region"] == "eu-1"
    assert doc["access_token"] == session.access_token() and doc["expires_at"] == session.expires_at
    assert text.startswith('{\n    "vendor_profile"') and text.endswith("}\n")  # indent and newline kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert sorted(os.listdir(tmp_path)) == ["token.json"]  # no temp file left
    assert fmt.parse(path.read_bytes()).refresh_token in oauth.valid


async def test_file_store_mode_and_failed_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.json"
    path.write_bytes(b"old")
    path.chmod(0o644)
    store = FileStore(path)
    assert await store.changed()
    assert await store.read() == b"old" and not await store.changed()
    await store.write(b"new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and not await store.changed()
    path.write_bytes(b"new")  # rewritten with the same content: not a change
    assert not await store.changed()
    path.write_bytes(b"ide wrote this")
    assert await store.changed()

    def broken(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        await store.write(b"lost")
    assert path.read_bytes() == b"ide wrote this"
    assert sorted(os.listdir(tmp_path)) == ["t.json"]


async def test_revoked_is_rejected_without_leaking(oauth: FakeOAuth, pool: Pool, clock: Clock,
                                                   caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    store = MemoryStore(initial_file(oauth, clock))
    session, fmt = make(oauth, pool, clock, store)
    await session.load()
    oauth.revoked = True
    clock.advance(1.9)
    await session.ensure_fresh()  # still valid: returns, refresh runs in the background
    task = session._task
    assert task is not None
    await task
    assert session.state == "rejected"
    assert session.last_error is not None and "invalid_grant" in session.last_error
    assert oauth.calls == 1
    await session.ensure_fresh()  # valid token keeps serving, no new attempt
    assert oauth.calls == 1
    clock.advance(1.0)
    with pytest.raises(RefreshRejected) as caught:
        await session.ensure_fresh()
    assert "new login" in str(caught.value) and oauth.calls == 1
    assert_no_secret(oauth, str(caught.value), repr(caught.value), repr(session), str(session), repr(store),
                     repr(fmt), repr(session.tokens), repr(fmt.refresh_request(session.tokens)),
                     session.last_error, *(r.getMessage() for r in caplog.records))  # fmt: skip

    # A new login (the user ran the vendor's tool again) clears it.
    oauth.revoked = False
    store.put(fmt.dump(TokenSet(**{**_login_tokens(oauth, clock)}), await store.read()))
    clock.advance(session.poll_interval)
    await session.ensure_fresh()
    assert session.state == "valid" and session.last_error is None


def _login_tokens(oauth: FakeOAuth, clock: Clock) -> dict[str, Any]:
    login = oauth.login()
    return {"access_token": login["access_token"], "refresh_token": login["refresh_token"],
            "expires_at": clock() + LIFETIME}  # fmt: skip


async def test_failing_refresh_backs_off(oauth: FakeOAuth, pool: Pool, clock: Clock) -> None:
    session, _ = make(oauth, pool, clock, MemoryStore(initial_file(oauth, clock)), backoff=(5.0, 20.0))
    await session.load()
    old = session.access_token()
    oauth.fail_next = 4
    clock.advance(1.9)

    async def attempt() -> None:
        await session.ensure_fresh()
        if session._task is not None:
            await asyncio.shield(session._task)

    await attempt()
    assert session.state == "failing" and oauth.calls == 1
    assert "503" in (session.last_error or "") and session.retry_at == clock() + 5
    assert session.access_token() == old  # still valid: still used
    clock.advance(0.05)
    await attempt()
    assert oauth.calls == 1  # backing off
    clock.advance(1)
    with pytest.raises(TokenError, match="refreshing fails"):  # expired meanwhile, and no attempt allowed yet
        await session.ensure_fresh()
    for calls, wait in ((2, 10), (3, 20), (4, 20)):  # 5 s doubling, capped
        clock.advance(session.retry_at - clock())  # type: ignore[operator]
        with pytest.raises(TokenError):
            await attempt()  # expired: the caller waits for the attempt and learns it failed
        assert oauth.calls == calls and session.retry_at == clock() + wait
    clock.advance(20)
    await attempt()
    assert session.state == "valid" and session.last_error is None and session.access_token() != old


async def test_read_only_never_calls_and_adopts(oauth: FakeOAuth, pool: Pool, clock: Clock) -> None:
    store = MemoryStore(initial_file(oauth, clock))
    session, fmt = make(oauth, pool, clock, store, refresh=False)
    await session.load()
    clock.advance(1.9)
    await session.ensure_fresh()
    clock.advance(0.2)
    with pytest.raises(TokenError, match="waiting for new tokens"):
        await session.ensure_fresh()
    assert session.state == "expired"
    delivered = TokenSet(**_login_tokens(oauth, clock))
    store.put(fmt.dump(delivered, await store.read()))  # the operator refreshed and wrote the Secret
    clock.advance(session.poll_interval)
    await session.ensure_fresh()
    assert session.access_token() == delivered.access_token and session.state == "valid"
    assert oauth.calls == 0 and session.refresh_count == 0


async def test_ide_written_file_adopted(oauth: FakeOAuth, pool: Pool, clock: Clock, tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    path.write_bytes(initial_file(oauth, clock))
    session, fmt = make(oauth, pool, clock, FileStore(path))
    await session.load()
    post = pool_post(pool, connect_timeout=30, read_timeout=60)

    # The IDE refreshes (rotating the refresh token) and rewrites the file non-atomically.
    ide = await refresh_once(fmt, fmt.parse(path.read_bytes()), post)
    path.write_bytes(fmt.dump(ide, path.read_bytes()))
    assert await session.reload()
    assert session.access_token() == ide.access_token and oauth.calls == 1
    assert not await session.reload()

    # The IDE refreshes again just before our refresh is due: we adopt its tokens instead of spending a
    # refresh token it has used up; and once due ourselves, we refresh with its newest refresh token.
    clock.advance(1.0)
    ide = await refresh_once(fmt, ide, post)
    path.write_bytes(fmt.dump(ide, path.read_bytes()))
    clock.advance(0.85)
    await session.ensure_fresh()
    assert session._task is not None
    await asyncio.shield(session._task)
    assert session.state == "valid" and oauth.calls == 2 and session.access_token() == ide.access_token
    clock.advance(session.expires_at - clock() + 0.01)  # type: ignore[operator]
    await session.ensure_fresh()  # expired: waits for our own refresh
    assert session.state == "valid" and oauth.calls == 3 and session.refresh_count == 1


async def test_static_key_never_refreshes(tmp_path: Path) -> None:
    async def post(_: Any) -> tuple[int, bytes]:
        raise AssertionError("no refresh for a static key")

    fmt = StaticKeyFormat()
    path = tmp_path / "key"
    path.write_text("sk-static-1\n")
    session = Session(fmt, FileStore(path), post)
    await session.ensure_fresh()
    assert session.access_token() == "sk-static-1" and session.state == "valid" and session.refresh_at is None
    assert fmt.dump(TokenSet("sk-2"), b"sk-static-1\n") == b"sk-2\n"
    assert fmt.parse(b'{"api_key": "sk-3", "note": 1}').access_token == "sk-3"
    assert json.loads(fmt.dump(TokenSet("sk-4"), b'{"api_key": "sk-3", "note": 1}')) == {"api_key": "sk-4", "note": 1}
    with pytest.raises(TokenError):
        fmt.parse(b"two\nkeys")


def test_oauth2_format_shapes() -> None:
    clock = Clock()
    fmt = OAuth2Format("v", "https://auth.example/token", "cli", json_body=True, access_field="accessToken",
                       refresh_field="refreshToken", expires_at_field="expiresAt", expires_in_field="expiresIn",
                       clock=clock)  # fmt: skip
    raw = b'{"accessToken":"a1","refreshToken":"r1","expiresAt":"2023-11-14T22:13:20.000Z","x":1}'
    tokens = fmt.parse(raw)
    assert tokens.expires_at == 1_700_000_000.0
    request = fmt.refresh_request(tokens)
    assert request is not None and json.loads(request.body) == {
        "grant_type": "refresh_token", "refresh_token": "r1", "client_id": "cli"}  # fmt: skip
    new = fmt.parse_refresh(tokens, 200, b'{"accessToken": "a2", "expiresIn": 60}')
    assert (new.access_token, new.refresh_token) == ("a2", "r1")  # refresh token not rotated: kept
    assert new.expires_at == clock() + 60
    out = fmt.dump(new.replace(expires_at=1_700_000_060.0), raw)
    assert out == b'{"accessToken":"a2","refreshToken":"r1","expiresAt":"2023-11-14T22:14:20.000Z","x":1}'
    with pytest.raises(RefreshRejected):
        fmt.parse_refresh(tokens, 400, b'{"error": "invalid_grant", "error_description": "r1 revoked"}')
    with pytest.raises(TokenError) as caught:
        fmt.parse_refresh(tokens, 502, b"<html>r1</html>")
    assert not isinstance(caught.value, RefreshRejected) and "r1" not in str(caught.value)
    with pytest.raises(TokenError) as caught:
        fmt.parse(b'{"accessToken": "a1", ')
    assert "a1" not in str(caught.value)
