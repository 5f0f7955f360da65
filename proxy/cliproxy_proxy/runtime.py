"""The immutable routing snapshot a request reads once: credentials, the model table, precomputed bodies.

Built off to the side from a validated :class:`ProxyConfig`, then swapped in by one assignment, so a request
keeps the snapshot it started with while a reload happens.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from pydantic import SecretStr

from .catalog import KINDS, Wire
from .clients import Client, client_of, plain_client
from .config import (
    CONTROL_CHARACTERS,
    MAX_FALLBACKS,
    CompatProvider,
    ConfigError,
    EntryPolicy,
    KeySource,
    ModelEntry,
    ProxyConfig,
    RateLimit,
    _Routed,
)
from .loader import ConfigSource
from .model_lists import DEFAULT_SHAPE, prebuilt
from .oauth.base import TokenError
from .oauth.cloud import identity_of
from .oauth.session import Session
from .oauth.tokens import token_format
from .oauth.vendors import (
    Sessions,
    SessionSpec,
    base_url_of,
    content_source,
    inline_document,
    is_session,
    registration,
    session_headers,
)
from .relay import ModelRewrite
from .translate import UPSTREAM
from .translate.codec import Codec, UpstreamCall
from .upstream import Endpoint


@dataclass(frozen=True, slots=True)
class Policy:
    """The retry and timeout values in force for one entry's models: its own policy over the top level."""

    request_retry: int
    max_retry_interval: float
    max_retry_credentials: int
    connect: float
    read: float

    @classmethod
    def of(cls, config: ProxyConfig, own: EntryPolicy | None) -> Policy:
        given = own.model_dump(exclude_none=True) if own is not None else {}
        top = {"request_retry": config.request_retry, "max_retry_interval": config.max_retry_interval,
               "max_retry_credentials": config.max_retry_credentials,
               "connect_timeout": config.timeouts.connect, "read_timeout": config.timeouts.read}  # fmt: skip
        merged = {**top, **given}
        return cls(merged["request_retry"], merged["max_retry_interval"], merged["max_retry_credentials"],
                   merged["connect_timeout"], merged["read_timeout"])  # fmt: skip


DEFAULT_POLICY = Policy.of(ProxyConfig(), None)


@dataclass(frozen=True, slots=True, eq=False)
class Credential:
    """One upstream key with everything needed to call it. ``headers`` holds the secret: never log it."""

    id: str
    provider: str
    label: str
    wire: Wire
    base_url: str
    headers: Mapping[str, str] = field(repr=False)
    secret: str | None = field(repr=False)
    proxy: str | None
    endpoint: Endpoint = field(repr=False)
    heads: dict[str, bytes] = field(repr=False)  # request heads by path, filled on first use
    priority: int
    weight: int  # its share of round-robin picks among ready credentials of its priority (0: a standby)
    prefix: str | None
    models: tuple[ModelEntry, ...]
    excluded: tuple[str, ...]
    rate_limit: RateLimit | None
    cooling: bool
    codec: Codec  # its wire's codec, or one of its own for a session whose tokens it carries (``with_tokens``)
    models_endpoint: str = "/models"
    force_prefix: bool | None = None  # this entry's force-model-prefix, when it overrides the top level
    session: Session | None = field(default=None, repr=False)  # an OAuth / session token, kept fresh
    policy: Policy = DEFAULT_POLICY  # the retry and timeout values of its entry
    defaults: Mapping[str, str] = field(default_factory=dict)  # lower-case headers a client's own may replace
    pinned: frozenset[str] = frozenset()  # lower-case names of the headers no client header may replace

    @property
    def discovers_models(self) -> bool:
        return not self.models and self.session is None and self.wire is Wire.OPENAI_CHAT

    def scoped(self, path: str, model: str = "") -> str:
        """Where a request for ``model`` goes below the base URL: where its codec puts it (a deployment URL, a
        project's path)."""
        return self.codec.locate(path, model)

    def head(self, path: str, vendor: Mapping[str, str] | None = None) -> bytes:
        """The precomputed request line and headers for a POST to ``path``; a session's token is current.

        ``vendor``: the client's vendor headers (lower-case names) on a same-format request. The key and the
        configured headers win over them; a codec's default header (an API version) does not.
        """
        extra = {name: value for name, value in vendor.items() if name not in self.pinned} if vendor else {}
        if self.session is not None:  # tokens change on refresh: never cached
            return self.endpoint.head("POST", path, {**self.headers, **self.session_auth(self.session), **extra})
        head = self.heads.get(path)
        if head is None:
            head = self.heads[path] = self.endpoint.head("POST", path, self.headers)
        if not extra:
            return head
        if any(self.defaults.get(name, value) != value for name, value in extra.items()):
            kept = {name: value for name, value in self.headers.items() if name.lower() not in extra}
            return self.endpoint.head("POST", path, {**kept, **extra})  # the client's replaces a default: rare
        added = "".join(f"{name}: {value}\r\n" for name, value in extra.items() if name not in self.defaults)
        return head + added.encode("latin-1")

    def session_auth(self, session: Session) -> dict[str, str]:
        return self.codec.auth_headers(session.access_token())

    async def signed_head(self, path: str, vendor: Mapping[str, str] | None, body: bytes | bytearray) -> bytes:
        """The head for a codec that authenticates each request: its hook sees the final headers and body."""
        extra = {name: value for name, value in vendor.items() if name not in self.pinned} if vendor else {}
        headers = {**self.headers, **(self.session_auth(self.session) if self.session is not None else {}), **extra}
        call = UpstreamCall("POST", self.base_url.rstrip("/") + path, headers, body)
        await self.codec.authenticate(call, self)
        return self.endpoint.head(call.method, path, call.headers)

    def current_secret(self) -> str | None:
        """The key or token upstream error bodies must be scrubbed of."""
        return self.session.access_token() if self.session is not None else self.secret


@dataclass(frozen=True, slots=True, eq=False)
class Target:
    """A credential serving one upstream model under one exposed id."""

    credential: Credential
    upstream_model: str
    exposed_model: str
    rewrite: ModelRewrite | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Route:
    """Every target for one exposed model id, as priority groups, highest first."""

    model: str
    groups: tuple[tuple[Target, ...], ...]
    weighted: bool = False  # a credential's weight is not 1: picks are smooth weighted round-robin

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(t for group in self.groups for t in group)

    @property
    def owner(self) -> str:
        """The provider that serves the model first: what model lists name."""
        return self.groups[0][0].credential.provider

    @property
    def policy(self) -> Policy:
        """Retries follow the first target's entry: in Kubernetes, every target of a model is one route's."""
        return self.groups[0][0].credential.policy


@dataclass(frozen=True, slots=True)
class Runtime:
    config: ProxyConfig
    fingerprint: str
    credentials: tuple[Credential, ...]
    routes: Mapping[str, Route]
    hints: Mapping[str, tuple[str, ...]]
    model_lists: Mapping[str, bytes]  # GET /v1/models of every model, by client format (see model_lists)
    client_keys: tuple[bytes, ...] = field(repr=False)
    secret_files: tuple[Path, ...]
    loaded_at: float
    sessions: Sessions = field(default_factory=Sessions, repr=False)
    clients: tuple[Client, ...] = ()  # whose each of client_keys is (a plain api-keys key: named by its place)
    fallbacks: Mapping[str, tuple[Route, ...]] = field(default_factory=dict)  # model -> routes tried after it

    @property
    def models_body(self) -> bytes:
        """OpenAI's model list, the default shape."""
        return self.model_lists[DEFAULT_SHAPE]


def _excluded(patterns: tuple[str, ...], *names: str) -> bool:
    return any(fnmatchcase(n.lower(), p.lower()) for p in patterns for n in names)


def _credential_id(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


class _Builder:
    """Turns config blocks into credentials, reading secret files through the source."""

    def __init__(self, config: ProxyConfig, source: ConfigSource | None, sessions: Sessions | None = None) -> None:
        self.config = config
        self.source = source
        self.sessions = sessions or Sessions()
        self.secret_files: list[Path] = []
        self.credentials: list[Credential] = []

    def secret(self, inline: object, file: str | None, where: str, *, lines: bool = False) -> str:
        """A key inline or from its file; one from a file (not one of ``lines``) is a single header-safe line."""
        if file is not None:
            if self.source is None:
                raise ConfigError(f"{where}: api-key-file needs a config file to resolve against")
            self.secret_files.append(self.source.secret_path(file))
            value = self.source.read_secret(file, where)
            if not lines and CONTROL_CHARACTERS.search(value):
                raise ConfigError(f"{where}: the secret file holds control characters (CR, LF, NUL...) inside")
            return value
        value = inline.get_secret_value() if inline is not None else ""  # type: ignore[attr-defined]
        return str(value)

    def with_secret_files(self, entry: _Routed, where: str) -> _Routed:
        """The entry with each of its ``SECRET_FILES`` given by file read into its inline field."""
        read = {name: SecretStr(self.secret(None, file, f"{where}.{name.replace('_', '-')}-file"))
                for name in entry.SECRET_FILES if (file := getattr(entry, f"{name}_file")) is not None}  # fmt: skip
        return entry.model_copy(update=read) if read else entry

    def add(
        self,
        block: str,
        index: int,
        entry: _Routed,
        key: str | None,
        provider: str,
        base_url: str,
        proxy: str | None,
        sub: str = "",
        session: Session | None = None,
        codec: Codec | None = None,
        extra_headers: Mapping[str, str] | None = None,
        session_origin: str = "",
        weight: int | None = None,
    ) -> None:
        kind = KINDS[block]
        codec = codec or UPSTREAM[kind.wire].for_entry(entry)
        auth = codec.auth_headers(key) if key is not None else {}
        headers = {"Content-Type": "application/json", **codec.default_headers, **auth, **(extra_headers or {}),
                   **entry.headers}  # fmt: skip
        names = {name.lower() for name in headers}
        configured = {name.lower() for name in entry.headers}
        defaults = {n.lower(): v for n, v in codec.default_headers.items() if n.lower() not in configured}
        cooling = not self.config.disable_cooling and not entry.disable_cooling
        proxy_url = self._proxy(proxy if proxy is not None else entry.proxy_url)
        endpoint = Endpoint.parse(base_url, proxy_url)
        label = entry.name if entry.name and block != "openai-compatibility" else f"{block}[{index}]{sub}"
        self.credentials.append(
            Credential(
                id=_credential_id(block, provider, base_url, key or label + session_origin),
                provider=provider,
                label=label,
                wire=kind.wire,
                base_url=base_url,
                headers=headers,
                secret=key,
                proxy=proxy_url,
                endpoint=endpoint,
                heads={},
                priority=entry.priority,
                weight=entry.weight if weight is None else weight,
                prefix=entry.prefix,
                models=entry.models,
                excluded=entry.excluded_models,
                rate_limit=entry.rate_limit,
                cooling=cooling,
                codec=codec,
                models_endpoint=entry.models_endpoint if isinstance(entry, CompatProvider) else "/models",
                force_prefix=entry.force_model_prefix,
                session=session,
                policy=Policy.of(self.config, entry.policy),
                defaults=defaults,
                pinned=frozenset(names - set(defaults)),
            )
        )

    def add_session(self, block: str, index: int, entry: _Routed, where: str) -> None:
        """A session credential: its tokens parsed now (a broken file is a config error), kept fresh later."""
        raw, path = self._token_source(entry, where)
        beside = registration(block, path, raw) if self.config.token_refresh else None
        fmt = token_format(block, getattr(entry, "refresh_url", None), beside)
        try:
            fmt.parse(raw)
        except TokenError as error:
            raise ConfigError(f"{where}.token-file: {error}") from None
        refresh = self.config.token_refresh
        proxy_url = self._proxy(entry.proxy_url)
        origin = str(path) if path is not None and refresh else content_source(raw)
        session = self.sessions.get(SessionSpec(block, where, origin, refresh, proxy_url), fmt, raw, path)
        kind = KINDS[block]
        tokens = session.tokens
        codec = UPSTREAM[kind.wire].for_entry(entry).with_tokens(tokens)
        base_url = base_url_of(entry, tokens, kind.default_base_url or "")
        # A token delivered anew (the operator's refresh) is a new credential: no cooldown of the old one carries over.
        self.add(block, index, entry, None, block, base_url, None, session=session, codec=codec,
                 extra_headers=session_headers(block, tokens), session_origin=origin)  # fmt: skip

    def _token_source(self, entry: _Routed, where: str) -> tuple[bytes, Path | None]:
        inline = inline_document(entry)
        if inline is not None:
            return inline, None
        file = getattr(entry, "token_file", None)
        if self.source is None or not isinstance(file, str):
            raise ConfigError(f"{where}.token-file: needs a config file to resolve against")
        path = self.source.secret_path(file)
        self.secret_files.append(path)
        return self.source.read_secret(file, f"{where}.token-file").encode(), path

    def _proxy(self, value: str | None) -> str | None:
        if value in ("direct", "none", ""):
            return None
        return value if value is not None else self._proxy(self.config.proxy_url or "")

    def build(self) -> None:
        for block, entries in self.config.blocks():
            kind = KINDS[block]
            for index, entry in enumerate(entries):
                where = f"{block}[{index}]"
                if isinstance(entry, CompatProvider):
                    if entry.disabled:
                        continue
                    for k, item in enumerate(entry.api_key_entries):
                        key = self.secret(item.api_key, item.api_key_file, f"{where}.api-key-entries[{k}]")
                        self.add(
                            block,
                            index,
                            entry,
                            key,
                            entry.name,
                            entry.base_url,
                            item.proxy_url,
                            sub=f".api-key-entries[{k}]",
                            weight=item.weight,
                        )
                    continue
                if is_session(entry):
                    self.add_session(block, index, entry, where)
                    continue
                base_url = entry.upstream_base_url(kind.default_base_url)
                identity = identity_of(entry, functools.partial(self.secret, lines=True), where)
                if identity is not None:  # a cloud identity's tokens, fetched and refreshed by its library
                    spec = SessionSpec(block, where, identity.source, True, None)
                    session = self.sessions.cloud(spec, identity.make)
                    self.add(block, index, entry, None, block, base_url, None, session=session,
                             session_origin=identity.source)  # fmt: skip
                    continue
                if entry.SECRET_FILES:  # keys its codec presents itself (keys that sign each request): no api-key
                    self.add(block, index, self.with_secret_files(entry, where), None, block, base_url, None)
                    continue
                assert isinstance(entry, KeySource)  # by validation
                secret = self.secret(entry.api_key, entry.api_key_file, where)
                self.add(block, index, entry, secret, block, base_url, None)


def _routes(
    config: ProxyConfig, credentials: list[Credential], discovered: Mapping[str, tuple[str, ...]]
) -> tuple[dict[str, Route], dict[str, tuple[str, ...]]]:
    by_model: dict[str, list[Target]] = {}
    hints: dict[str, list[str]] = {}
    for credential in credentials:
        entries = credential.models or tuple(ModelEntry(name=m) for m in discovered.get(credential.id, ()))
        for entry in entries:
            if _excluded(credential.excluded, entry.name, entry.exposed):
                continue
            ids = []
            if credential.prefix:
                ids.append(f"{credential.prefix}/{entry.exposed}")
            forced = config.force_model_prefix if credential.force_prefix is None else credential.force_prefix
            if not credential.prefix or not forced:
                ids.append(entry.exposed)
            else:
                hints.setdefault(entry.exposed, []).append(ids[0])
            for model_id in ids:
                key = credential.codec.model_key
                rewrite = ModelRewrite(entry.name, model_id, key) if entry.name != model_id else None
                by_model.setdefault(model_id, []).append(Target(credential, entry.name, model_id, rewrite))
    routes = {}
    for model_id, targets in by_model.items():
        priorities = sorted({t.credential.priority for t in targets}, reverse=True)
        groups = tuple(tuple(t for t in targets if t.credential.priority == p) for p in priorities)
        routes[model_id] = Route(model_id, groups, weighted=any(t.credential.weight != 1 for t in targets))
    return routes, {k: tuple(v) for k, v in hints.items() if k not in routes}


def fallback_chains(config: ProxyConfig, routes: Mapping[str, Route]) -> dict[str, tuple[Route, ...]]:
    """Each model's fallbacks: its own list, then theirs (breadth first), each model once, at most MAX_FALLBACKS.

    Resolved with the snapshot, so a request walks a tuple: no model is tried twice (A -> B -> A cannot loop) and
    a chain is bounded however the config nests. A fallback no route serves (yet) is skipped.
    """
    chains = {}
    for model in config.fallbacks:
        chain: list[str] = []
        pending = deque(config.fallbacks[model])
        while pending and len(chain) < MAX_FALLBACKS:
            other = pending.popleft()
            if other == model or other in chain:
                continue
            chain.append(other)
            pending.extend(config.fallbacks.get(other, ()))
        served = tuple(routes[other] for other in chain if other in routes)
        if served and model in routes:
            chains[model] = served
    return chains


def owners(routes: Mapping[str, Route]) -> dict[str, str]:
    """Each model id's first provider, as model lists name it."""
    return {model_id: route.owner for model_id, route in routes.items()}


def build_credentials(
    config: ProxyConfig, source: ConfigSource | None, sessions: Sessions | None = None
) -> tuple[list[Credential], list[Path]]:
    """Every credential of the config, secrets resolved; raises ConfigError naming the failing path.

    ``sessions`` holds the live token sessions of the config in force, so a reload keeps them.
    """
    builder = _Builder(config, source, sessions)
    builder.build()
    return builder.credentials, builder.secret_files


def build_runtime(
    config: ProxyConfig,
    source: ConfigSource | None,
    *,
    fingerprint: str = "",
    discovered: Mapping[str, tuple[str, ...]] | None = None,
    credentials: tuple[list[Credential], list[Path]] | None = None,
    sessions: Sessions | None = None,
) -> Runtime:
    sessions = sessions or Sessions()
    creds, secret_files = credentials or build_credentials(config, source, sessions)
    client_keys = [k.get_secret_value() for k in config.api_keys]
    clients = [plain_client(f"api-keys[{index}]") for index in range(len(client_keys))]
    if config.api_keys_file is not None:
        builder = _Builder(config, source)
        text = builder.secret(None, config.api_keys_file, "api-keys-file", lines=True)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        client_keys.extend(lines)
        clients.extend(plain_client(f"api-keys-file[{index}]") for index in range(len(lines)))
        secret_files.extend(builder.secret_files)
    builder = _Builder(config, source)
    for index, entry in enumerate(config.client_keys):
        key = builder.secret(entry.api_key, entry.api_key_file, f"client-keys[{index}].api-key-file").strip()
        if not key:
            raise ConfigError(f"client-keys[{index}]: the key is empty")
        if key in client_keys:  # one key, one identity: a caller's name and limits are never a guess
            raise ConfigError(f"client-keys[{index}]: the key is also another entry's or in api-keys")
        client_keys.append(key)
        clients.append(client_of(entry))
    secret_files.extend(builder.secret_files)
    routes, hints = _routes(config, creds, discovered or {})
    now = time.time()
    return Runtime(
        config=config,
        fingerprint=fingerprint,
        credentials=tuple(creds),
        routes=routes,
        hints=hints,
        model_lists=prebuilt(owners(routes), now),
        client_keys=tuple(k.encode() for k in client_keys),
        secret_files=tuple(secret_files),
        loaded_at=now,
        sessions=sessions,
        clients=tuple(clients),
        fallbacks=fallback_chains(config, routes),
    )


def rerouted(runtime: Runtime, discovered: Mapping[str, tuple[str, ...]]) -> Runtime:
    """The same snapshot with its routes rebuilt for newly discovered model lists; no file is read again."""
    routes, hints = _routes(runtime.config, list(runtime.credentials), discovered)
    now = time.time()
    return dataclasses.replace(
        runtime, routes=routes, hints=hints, model_lists=prebuilt(owners(routes), now), loaded_at=now,
        fallbacks=fallback_chains(runtime.config, routes),
    )  # fmt: skip
