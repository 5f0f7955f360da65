"""One credential's live tokens: refreshed ahead of expiry, shared with the vendor's IDE through its file.

The hot path reads :meth:`Session.access_token` without I/O. :meth:`Session.ensure_fresh`, awaited before
each request, starts at most one background refresh when the token nears expiry and only makes a caller
wait once the token has actually expired. Rotating OAuth servers reject a refresh token used twice, so the
store is re-read before every refresh: when the IDE (or the operator) has refreshed already, its tokens are
adopted rather than spending a refresh token it has used up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

from ..upstream import Endpoint, Pool, UpstreamError
from .base import Post, RefreshRejected, RefreshRequest, TokenError, TokenFormat, TokenSet, refresh_once

log = logging.getLogger(__name__)

State = Literal["valid", "refreshing", "expired", "failing", "rejected"]


# -- stores --------------------------------------------------------------------------------------------------


class TokenStore(Protocol):
    """Where a credential's token file lives; ``changed`` is cheap so it can be polled."""

    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def changed(self) -> bool:
        """Whether the content differs from what this store last read or wrote."""
        ...


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_mtime_ns, st.st_size


class FileStore:
    """A token file shared with the vendor's own tool: read off the event loop, replaced atomically."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) when last read or written
        self._digest: bytes | None = None

    def __repr__(self) -> str:
        return f"FileStore({str(self.path)!r})"

    def _remember(self, st: os.stat_result, data: bytes) -> None:
        self._seen = _signature(st)
        self._digest = hashlib.sha256(data).digest()

    def _read(self) -> tuple[os.stat_result, bytes]:
        with open(self.path, "rb") as f:  # fstat of the open file: the signature matches the bytes read
            return os.fstat(f.fileno()), f.read()

    def _read_and_remember(self) -> bytes:
        st, data = self._read()
        self._remember(st, data)
        return data

    async def read(self) -> bytes:
        return await asyncio.to_thread(self._read_and_remember)

    def _changed(self) -> bool:
        try:
            if _signature(os.stat(self.path)) == self._seen:
                return False
            st, data = self._read()
        except FileNotFoundError:
            return False  # deleted, or between an unlink and a rename: nothing to adopt yet
        if hashlib.sha256(data).digest() == self._digest:
            self._seen = _signature(st)  # touched or rewritten unchanged
            return False
        return True

    async def changed(self) -> bool:
        return await asyncio.to_thread(self._changed)

    def _write(self, data: bytes) -> None:
        mode = 0o600
        with contextlib.suppress(FileNotFoundError):
            mode &= os.stat(self.path).st_mode  # keep a stricter mode (0400) than ours
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                st = os.fstat(f.fileno())
            os.replace(tmp, self.path)  # readers see the old file or the new one, never half of one
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._remember(st, data)
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._write, data)


class MemoryStore:
    """Tokens held in memory: for tests, and for proxies whose tokens the operator delivers (read-only mode)."""

    def __init__(self, data: bytes = b"") -> None:
        self._data = data
        self._version = 0
        self._seen = -1

    def __repr__(self) -> str:
        return f"MemoryStore(version={self._version})"

    def put(self, data: bytes) -> None:
        """New content from outside (the operator's Secret): the session adopts it on its next reload."""
        self._data = data
        self._version += 1

    async def read(self) -> bytes:
        self._seen = self._version
        return self._data

    async def write(self, data: bytes) -> None:
        self.put(data)
        self._seen = self._version

    async def changed(self) -> bool:
        return self._seen != self._version


# -- the refresh exchange ------------------------------------------------------------------------------------


def pool_post(pool: Pool, *, proxy_url: str | None = None, connect_timeout: float = 10.0,
              read_timeout: float | None = 30.0) -> Post:  # fmt: skip
    """A ``post`` that sends refresh calls through the proxy's pool, so egress proxies apply as for chat."""

    async def post(request: RefreshRequest) -> tuple[int, bytes]:
        parts = urlsplit(request.url)
        endpoint = Endpoint.parse(f"{parts.scheme}://{parts.netloc}", proxy_url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = endpoint.head("POST", path, request.headers)
        response = await pool.request(endpoint, head, request.body, connect_timeout=connect_timeout,
                                      read_timeout=read_timeout)  # fmt: skip
        try:
            body = await response.read()
        finally:
            response.release()
        return response.status, body

    return post


# -- the session ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Failure:
    kind: Literal["failing", "rejected"]
    message: str
    attempts: int
    retry_at: float


class Session:
    """One credential's tokens, kept fresh (``refresh=True``) or only adopted from the store (read-only)."""

    def __init__(
        self,
        fmt: TokenFormat,
        store: TokenStore,
        post: Post,
        *,
        refresh_margin: float = 300.0,
        refresh: bool = True,
        clock: Callable[[], float] = time.time,
        name: str | None = None,
        lifetime_fraction: float = 0.1,
        backoff: tuple[float, float] = (5.0, 300.0),
        poll_interval: float = 1.0,
    ) -> None:
        self.fmt = fmt
        self.store = store
        self.name = name or fmt.name
        self.refresh_margin = refresh_margin
        self.refresh = refresh
        self.lifetime_fraction = lifetime_fraction
        self.backoff = backoff
        self.poll_interval = poll_interval
        self._post = post
        self._clock = clock
        self._tokens: TokenSet | None = None
        self._raw: bytes | None = None
        self._adopted_at = 0.0  # when the current tokens arrived: their lifetime is measured from here
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one reader/writer of the store at a time
        self._failure: _Failure | None = None
        self._last_poll = -math.inf
        self.last_refresh: float | None = None
        self.refresh_count = 0
        self.last_error: str | None = None  # why the last refresh or write-back failed; never token text

    def __repr__(self) -> str:
        return f"<Session {self.name} state={self.state} expires_at={self.expires_at}>"

    # -- what the request path reads ---------------------------------------------------------------------

    @property
    def tokens(self) -> TokenSet:
        if self._tokens is None:
            raise TokenError(f"{self.name}: tokens not loaded")
        return self._tokens

    def access_token(self) -> str:
        """The current access token: no I/O, for the hot path after :meth:`ensure_fresh`."""
        return self.tokens.access_token

    @property
    def expires_at(self) -> float | None:
        return self._tokens.expires_at if self._tokens is not None else None

    @property
    def refresh_at(self) -> float | None:
        """When a refresh becomes due: ``refresh_margin`` early, but never before 90 % of a short lifetime."""
        expires = self.expires_at
        if expires is None:
            return None
        lifetime = max(0.0, expires - self._adopted_at)
        return expires - min(self.refresh_margin, self.lifetime_fraction * lifetime)

    @property
    def retry_at(self) -> float | None:
        """When a failing refresh is tried again (None unless failing)."""
        return self._failure.retry_at if self._failure and self._failure.kind == "failing" else None

    @property
    def state(self) -> State:
        if self._task is not None:
            return "refreshing"
        if self._failure is not None:
            return self._failure.kind
        return "expired" if self._tokens is None or self._expired(self._clock()) else "valid"

    def _expired(self, now: float) -> bool:
        expires = self.expires_at
        return expires is not None and now >= expires

    def _due(self, now: float) -> bool:
        due = self.refresh_at
        return due is not None and now >= due

    def _may_try(self, now: float) -> bool:
        return self._failure is None or (self._failure.kind == "failing" and now >= self._failure.retry_at)

    # -- loading and adopting ----------------------------------------------------------------------------

    async def load(self) -> None:
        """Read and parse the store, whatever it holds; raises TokenError when it is unusable."""
        async with self._lock:
            try:
                raw = await self.store.read()
            except OSError as error:
                raise TokenError(f"{self.name}: cannot read the token store: {error.strerror or error}") from None
            tokens = self.fmt.parse(raw)
            self._raw = raw
            self._set(tokens)
            self._failure = None

    def adopt(self, raw: bytes) -> None:
        """Take tokens already read off the event loop (at config load); raises TokenError."""
        self._set(self.fmt.parse(raw))
        self._raw = raw

    async def reload(self) -> bool:
        """Adopt the store's tokens if someone else (the IDE, the operator) wrote new ones; True if adopted."""
        async with self._lock:
            return await self._reload_locked()

    async def _reload_locked(self) -> bool:
        try:
            if not await self.store.changed():
                return False
            raw = await self.store.read()
        except OSError as error:
            log.warning("oauth %s: cannot read the token store: %s", self.name, error.strerror or type(error).__name__)
            return False
        if raw == self._raw:
            return False
        try:
            new = self.fmt.parse(raw)
        except Exception as error:  # a half-written file from a tool that does not write atomically: next poll
            log.warning("oauth %s: ignoring an unusable token file: %s", self.name, self._describe(error))
            return False
        self._raw = raw
        current = self._tokens
        if current is not None and (new.access_token, new.refresh_token, new.expires_at) == (
            current.access_token, current.refresh_token, current.expires_at):  # fmt: skip
            return False
        if (current is not None and self._failure is None and new.expires_at is not None
                and current.expires_at is not None and new.expires_at < current.expires_at):  # fmt: skip
            log.info("oauth %s: ignoring a token file older than the tokens in use", self.name)
            return False
        self._set(new)
        self._failure = None
        self.last_error = None
        log.info("oauth %s: adopted new tokens from the store (%s)", self.name, self._lifetime_text())
        return True

    def _set(self, tokens: TokenSet) -> None:
        self._tokens = tokens
        self._adopted_at = self._clock()

    def _lifetime_text(self) -> str:
        expires = self.expires_at
        return "no expiry" if expires is None else f"expires in {expires - self._clock():.0f} s"

    # -- refreshing --------------------------------------------------------------------------------------

    async def ensure_fresh(self) -> None:
        """Make the current token usable for a request about to be sent.

        Within the refresh margin this starts one background refresh (or joins the one running) and returns at
        once; only a caller holding an expired token waits for it. Raises TokenError (RefreshRejected when only
        a new login helps) when the token has expired and no refresh can replace it now.
        """
        if self._tokens is None:
            await self.load()
        now = self._clock()
        if not self._due(now):
            return
        if self.refresh and self._task is None and self._may_try(now):
            self._start()
        elif self._task is None and now - self._last_poll >= self.poll_interval and not self._lock.locked():
            self._last_poll = now  # read-only, rejected or backing off: only new tokens in the store help
            await self.reload()
        if not self._expired(self._clock()):
            return
        if self._task is not None:
            await asyncio.shield(self._task)  # one caller giving up must not cancel everyone's refresh
            if not self._expired(self._clock()):
                return
        raise self._unusable()

    async def refresh_now(self) -> None:
        """Refresh whatever the margin (the vendor answered 401 to a token believed valid); respects backoff."""
        if not self.refresh:
            await self.reload()
            return
        if self._task is None:
            if not self._may_try(self._clock()):
                raise self._unusable()
            self._start()
        assert self._task is not None
        await asyncio.shield(self._task)
        if self._failure is not None:
            raise self._unusable()

    def request_refresh(self) -> None:
        """Start a refresh in the background, margin or not (the vendor refused a token believed valid)."""
        if self.refresh and self._task is None and self._may_try(self._clock()):
            self._start()

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run_refresh(), name=f"oauth-refresh-{self.name}")

    def _unusable(self) -> TokenError:
        failure = self._failure
        if failure is not None and failure.kind == "rejected":
            return RefreshRejected(f"{self.name}: the refresh token was rejected, a new login is needed "
                                   f"({failure.message})")  # fmt: skip
        if failure is not None:
            wait = max(0.0, failure.retry_at - self._clock())
            return TokenError(f"{self.name}: token expired; refreshing fails ({failure.message}), "
                              f"next attempt in {wait:.0f} s")  # fmt: skip
        if not self.refresh:
            return TokenError(f"{self.name}: token expired; waiting for new tokens from the store")
        return TokenError(f"{self.name}: token expired")

    async def _run_refresh(self) -> None:
        try:
            async with self._lock:
                if await self._reload_locked() and not self._due(self._clock()):
                    return  # the vendor's tool or the operator refreshed already
                try:
                    new = await refresh_once(self.fmt, self.tokens, self._post)
                except RefreshRejected:
                    # A rotating server rejects a refresh token the IDE has just used: its file has the new one.
                    if not await self._reload_locked():
                        raise
                    if not self._due(self._clock()):
                        return
                    new = await refresh_once(self.fmt, self.tokens, self._post)
                self._set(new)
                self._failure = None
                self.last_error = None
                self.last_refresh = self._clock()
                self.refresh_count += 1
                log.info("oauth %s: refreshed (%s)", self.name, self._lifetime_text())
                await self._write_back(new)
        except RefreshRejected as error:
            self._fail("rejected", error)
        except Exception as error:
            self._fail("failing", error)
        finally:
            self._task = None

    async def _write_back(self, tokens: TokenSet) -> None:
        """The vendor-format file with the new tokens; a failure leaves them in memory and is reported."""
        try:
            try:
                previous: bytes | None = await self.store.read()  # fields the IDE added meanwhile survive
            except OSError:
                previous = self._raw
            data = self.fmt.dump(tokens, previous)
            await self.store.write(data)
            self._raw = data
        except Exception as error:
            self.last_error = f"writing the refreshed tokens failed: {self._describe(error)}"
            log.warning("oauth %s: %s", self.name, self.last_error)

    def _fail(self, kind: Literal["failing", "rejected"], error: BaseException) -> None:
        previous = self._failure
        attempts = previous.attempts + 1 if previous is not None and previous.kind == kind else 1
        first, most = self.backoff
        delay = math.inf if kind == "rejected" else min(most, first * 2 ** (attempts - 1))
        message = self._describe(error)
        self._failure = _Failure(kind, message, attempts, self._clock() + delay)
        self.last_error = message
        if kind == "rejected":
            log.warning("oauth %s: refresh rejected, a new login is needed: %s", self.name, message)
        else:
            log.warning("oauth %s: refresh failed (attempt %d, retry in %.0f s): %s", self.name, attempts, delay,
                        message)  # fmt: skip

    def _describe(self, error: BaseException) -> str:
        """An error's text when its kind promises no secrets, its type otherwise; token text scrubbed anyway."""
        if isinstance(error, TokenError | UpstreamError | OSError | TimeoutError):
            text = str(error) or type(error).__name__
        else:
            text = type(error).__name__
        tokens = self._tokens
        if tokens is not None:
            for secret in (tokens.access_token, tokens.refresh_token):
                if secret:
                    text = text.replace(secret, "***")
        return text

    async def close(self) -> None:
        """Cancel an in-flight refresh (shutdown)."""
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
