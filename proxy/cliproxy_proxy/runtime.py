"""The immutable routing snapshot a request reads once: credentials, the model table, precomputed bodies.

Built off to the side from a validated :class:`ProxyConfig`, then swapped in by one assignment, so a request
keeps the snapshot it started with while a reload happens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import orjson

from .catalog import KINDS, Wire
from .clients import Client, client_of, plain_client
from .config import (
    CONTROL_CHARACTERS,
    AmpCredential,
    ApiKeyCredential,
    CompatProvider,
    ConfigError,
    CursorCredential,
    EntryPolicy,
    KiroCredential,
    ModelEntry,
    ProxyConfig,
    RateLimit,
    SessionCredential,
    VertexCredential,
    _Routed,
)
from .loader import ConfigSource
from .oauth.base import TokenError
from .oauth.session import Session
from .oauth.vendors import (
    Sessions,
    SessionSpec,
    base_url_of,
    content_source,
    inline_document,
    kiro_registration,
    session_headers,
    token_format,
)
from .relay import ModelRewrite
from .translate.canonical import Codec
from .translate.kiro import KiroCodec
from .translate.kiro import request_headers as kiro_request_headers
from .upstream import Endpoint

ANTHROPIC_VERSION = "2023-06-01"


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
    prefix: str | None
    models: tuple[ModelEntry, ...]
    excluded: tuple[str, ...]
    rate_limit: RateLimit | None
    cooling: bool
    models_endpoint: str = "/models"
    vertex_scope: str | None = None  # "projects/P/locations/L" for Vertex's project endpoints
    force_prefix: bool | None = None  # this entry's force-model-prefix, when it overrides the top level
    session: Session | None = field(default=None, repr=False)  # an OAuth / session token, kept fresh
    codec: Codec | None = None  # a codec of its own (Kiro's carries the account's profile ARN)
    policy: Policy = DEFAULT_POLICY  # the retry and timeout values of its entry
    defaults: Mapping[str, str] = field(default_factory=dict)  # lower-case headers a client's own may replace
    pinned: frozenset[str] = frozenset()  # lower-case names of the headers no client header may replace

    @property
    def discovers_models(self) -> bool:
        return not self.models and self.session is None and self.wire is Wire.OPENAI_CHAT

    def scoped(self, path: str) -> str:
        """A Vertex path inside this credential's project, when it has one."""
        if self.vertex_scope is None:
            return path
        return path.replace("/v1/publishers/", f"/v1/{self.vertex_scope}/publishers/", 1)

    def head(self, path: str, vendor: Mapping[str, str] | None = None) -> bytes:
        """The precomputed request line and headers for a POST to ``path``; a session's token is current.

        ``vendor``: the client's vendor headers (lower-case names) on a same-format request. The key and the
        configured headers win over them; a default (``anthropic-version``) does not.
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
        headers = _auth_headers(self.wire, session.access_token())
        if self.wire is Wire.KIRO:
            headers.update(kiro_request_headers())  # a fresh invocation id per call, as the Kiro IDE sends
        return headers

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

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(t for group in self.groups for t in group)

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
    models_body: bytes
    anthropic_models_body: bytes
    client_keys: tuple[bytes, ...] = field(repr=False)
    secret_files: tuple[Path, ...]
    loaded_at: float
    sessions: Sessions = field(default_factory=Sessions, repr=False)
    clients: tuple[Client, ...] = ()  # whose each of client_keys is (a plain api-keys key: named by its place)


def _auth_headers(wire: Wire, key: str | None, bearer: bool = False) -> dict[str, str]:
    """How each wire format presents its key."""
    if key is None:
        return {}
    if bearer:
        return {"Authorization": f"Bearer {key}"}
    if wire is Wire.ANTHROPIC:
        return {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION}
    if wire in (Wire.GEMINI, Wire.VERTEX):
        return {"x-goog-api-key": key}
    return {"Authorization": f"Bearer {key}"}


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
    ) -> None:
        kind = KINDS[block]
        scope = entry.scope if isinstance(entry, VertexCredential) else None
        bearer = scope is not None  # a project endpoint takes an OAuth access token, not an API key
        headers = {"Content-Type": "application/json", **_auth_headers(kind.wire, key, bearer), **(extra_headers or {}),
                   **entry.headers}  # fmt: skip
        names = {name.lower() for name in headers}
        configured = {name.lower() for name in entry.headers}
        defaults = {"anthropic-version": ANTHROPIC_VERSION} if "anthropic-version" in names - configured else {}
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
                prefix=entry.prefix,
                models=entry.models,
                excluded=entry.excluded_models,
                rate_limit=entry.rate_limit,
                cooling=cooling,
                models_endpoint=entry.models_endpoint if isinstance(entry, CompatProvider) else "/models",
                vertex_scope=scope,
                force_prefix=entry.force_model_prefix,
                session=session,
                codec=codec,
                policy=Policy.of(self.config, entry.policy),
                defaults=defaults,
                pinned=frozenset(names - set(defaults)),
            )
        )

    def add_session(self, block: str, index: int, entry: _Routed, where: str) -> None:
        """A session credential: its tokens parsed now (a broken file is a config error), kept fresh later."""
        raw, path = self._token_source(entry, where)
        registration = kiro_registration(path, raw) if block == "kiro" and path and self.config.token_refresh else None
        fmt = token_format(block, getattr(entry, "refresh_url", None), registration)
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
        codec = KiroCodec(profile_arn=tokens.extra.get("profile_arn")) if kind.wire is Wire.KIRO else None
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
                        )
                    continue
                if isinstance(entry, KiroCredential | CursorCredential | AmpCredential) or (
                    isinstance(entry, SessionCredential) and entry.token_file is not None
                ):
                    self.add_session(block, index, entry, where)
                    continue
                base_url = entry.base_url or kind.default_base_url or ""
                if isinstance(entry, VertexCredential) and entry.project and not entry.base_url:
                    host = "aiplatform" if entry.location == "global" else f"{entry.location}-aiplatform"
                    base_url = f"https://{host}.googleapis.com"
                assert isinstance(entry, ApiKeyCredential | SessionCredential)  # one key source, by validation
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
                key = "modelVersion" if credential.wire in (Wire.GEMINI, Wire.VERTEX) else "model"
                rewrite = ModelRewrite(entry.name, model_id, key) if entry.name != model_id else None
                by_model.setdefault(model_id, []).append(Target(credential, entry.name, model_id, rewrite))
    routes = {}
    for model_id, targets in by_model.items():
        priorities = sorted({t.credential.priority for t in targets}, reverse=True)
        groups = tuple(tuple(t for t in targets if t.credential.priority == p) for p in priorities)
        routes[model_id] = Route(model_id, groups)
    return routes, {k: tuple(v) for k, v in hints.items() if k not in routes}


def models_body(routes: Mapping[str, Route], created: float) -> bytes:
    data = [
        {
            "id": model_id,
            "object": "model",
            "created": int(created),
            "owned_by": route.groups[0][0].credential.provider,
        }
        for model_id, route in sorted(routes.items())
    ]
    return orjson.dumps({"object": "list", "data": data})


def anthropic_model(model_id: str, created: float) -> dict[str, str]:
    """One model in Anthropic's shape."""
    stamp = datetime.fromtimestamp(int(created), UTC).isoformat().replace("+00:00", "Z")
    return {"id": model_id, "type": "model", "display_name": model_id, "created_at": stamp}


def gemini_model(model_id: str, route: Route) -> dict[str, Any]:
    """One model in Gemini's shape (google-genai's ``models.get`` and ``models.list``)."""
    return {
        "name": f"models/{model_id}", "displayName": model_id,
        "description": f"{model_id}, served by {route.groups[0][0].credential.provider} through cliproxy",
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
    }  # fmt: skip


def anthropic_models_body(routes: Mapping[str, Route], created: float) -> bytes:
    """The same list in Anthropic's shape, for clients that send ``anthropic-version``."""
    data = [anthropic_model(m, created) for m in sorted(routes)]
    return orjson.dumps({
        "data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    })  # fmt: skip


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
        models_body=models_body(routes, int(now)),
        anthropic_models_body=anthropic_models_body(routes, int(now)),
        client_keys=tuple(k.encode() for k in client_keys),
        secret_files=tuple(secret_files),
        loaded_at=now,
        sessions=sessions,
        clients=tuple(clients),
    )


def rerouted(runtime: Runtime, discovered: Mapping[str, tuple[str, ...]]) -> Runtime:
    """The same snapshot with its routes rebuilt for newly discovered model lists; no file is read again."""
    routes, hints = _routes(runtime.config, list(runtime.credentials), discovered)
    now = time.time()
    return dataclasses.replace(
        runtime, routes=routes, hints=hints, models_body=models_body(routes, int(now)),
        anthropic_models_body=anthropic_models_body(routes, int(now)), loaded_at=now,
    )  # fmt: skip
