"""The config contract: the YAML/JSON document the proxy loads and the operator renders.

It accepts the provider blocks of cliproxyapi++'s catalog with their kebab-case keys. It is defined once,
here, and imported by the operator. Secrets may be written inline (``api-key``) or named by file
(``api-key-file``), so a Kubernetes Secret can be mounted beside a ConfigMap that holds none.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

import orjson
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from . import compat
from .catalog import KINDS


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _Block(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=_kebab, populate_by_name=True, frozen=True, hide_input_in_errors=True
    )


class _OneSource(_Block):
    """A block that takes its secret from exactly one of several sources (each a group of fields)."""

    SOURCES: ClassVar[tuple[tuple[str, ...], ...]] = ()

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        given = [group for group in self.SOURCES if any(getattr(self, name) is not None for name in group)]
        if self.SOURCES and len(given) != 1:
            names = " or ".join("/".join(_kebab(name) for name in group) for group in self.SOURCES)
            raise ValueError(f"exactly one of {names} is required")
        return self


_PREFIX_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
Prefix = Annotated[str, Field(pattern=_PREFIX_PATTERN, max_length=63)]
NonEmpty = Annotated[str, Field(min_length=1)]
Weight = Annotated[int, Field(ge=0, le=1000)]
#: How many other models a model may fall back to, and how many a request tries in all (fallbacks' own too).
MAX_FALLBACKS = 4


def check_url(value: str, *, schemes: tuple[str, ...] = ("http", "https")) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"must be an absolute {'/'.join(schemes)} URL")
    return value.rstrip("/")


class ModelEntry(_Block):
    """An upstream model this credential serves; ``alias`` is the name clients use instead."""

    name: NonEmpty
    alias: NonEmpty | None = None

    @property
    def exposed(self) -> str:
        return self.alias or self.name


class RateLimit(_Block):
    """Requests and tokens per minute a credential may use; enforced by the proxy."""

    rpm: Annotated[int, Field(gt=0)] | None = None
    tpm: Annotated[int, Field(gt=0)] | None = None


class EntryPolicy(_Block):
    """Retry and timeout values for the models of one entry, over the top-level ones (a route's own policy).

    Retries follow the policy of a model's first target (highest priority, config order); timeouts follow each
    target's own entry.
    """

    request_retry: Annotated[int, Field(ge=0, le=10)] | None = None
    max_retry_interval: Annotated[float, Field(ge=0)] | None = None
    max_retry_credentials: Annotated[int, Field(ge=0)] | None = None
    connect_timeout: Annotated[float, Field(gt=0)] | None = None
    read_timeout: Annotated[float, Field(gt=0)] | None = None


def header_problem(headers: Mapping[str, str]) -> str | None:
    """Why ``headers`` cannot go on an upstream request as written (names HTTP tokens, values Latin-1), or None.

    The operator asks it of each credential's headers, so one bad name fails that credential, not its gateway.
    """
    for name, text in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            return f"header name {name!r} is not an HTTP token"
        try:
            str(text).encode("latin-1")
        except UnicodeEncodeError:
            return f"header {name}: the value must be Latin-1 text"
    return None


class _Routed(_OneSource):
    """Keys every credential-bearing block shares: routing scope and network options."""

    #: Secrets its codec presents itself, each given inline (``<name>``) or by file (``<name>-file``); an entry
    #: that has them takes no ``api-key``.
    SECRET_FILES: ClassVar[tuple[str, ...]] = ()

    name: NonEmpty | None = None
    prefix: Prefix | None = None
    base_url: str | None = None
    headers: dict[NonEmpty, str] = Field(default_factory=dict)
    proxy_url: str | None = None
    models: tuple[ModelEntry, ...] = ()
    excluded_models: tuple[NonEmpty, ...] = ()
    priority: int = 0
    weight: Weight = 1  # the share of round-robin picks among ready credentials of equal priority (0: standby)
    rate_limit: RateLimit | None = None
    disable_cooling: bool | None = None
    force_model_prefix: bool | None = None  # overrides the top-level setting for this entry's models
    policy: EntryPolicy | None = None

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value)

    def default_base_url(self, catalog: str | None) -> str | None:
        """Where requests go without ``base-url``: the catalog's endpoint, unless the entry names its own (a region)."""
        return catalog

    def upstream_base_url(self, catalog: str | None) -> str:
        """What the wire's paths go below: ``base-url``, else the default."""
        return self.base_url or self.default_base_url(catalog) or ""

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        problem = header_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("proxy_url")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        if value is None or value in ("", "direct", "none"):
            return value
        return check_url(value, schemes=("http",))  # an HTTP proxy; HTTPS upstreams tunnel through CONNECT


class KeySource(_OneSource):
    """An entry whose secret may be a key, inline or in a file (some take another source besides)."""

    SOURCES: ClassVar[tuple[tuple[str, ...], ...]] = (("api_key",), ("api_key_file",))

    api_key: SecretStr | None = None
    api_key_file: NonEmpty | None = None


class ApiKeyCredential(_Routed, KeySource):
    """A direct or aggregator API key: claude-api-key, openrouter, groq and the other keyed blocks."""


class VertexCredential(ApiKeyCredential):
    """Vertex AI: an API key (express mode), or for ``project``'s endpoint an identity: a service-account key file,
    Application Default Credentials (``adc: true``: GKE Workload Identity, gcloud, the metadata server), or a
    static OAuth access token in ``api-key``. ``claude-*`` models are Anthropic's, called with ``rawPredict``."""

    SOURCES = (("api_key",), ("api_key_file",), ("service_account_file",), ("adc",))

    service_account_file: NonEmpty | None = None
    adc: Literal[True] | None = None
    project: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{4,61}[a-z0-9]$")] | None = None
    location: Annotated[str, Field(pattern=r"^[a-z0-9-]+$")] = "us-central1"

    @model_validator(mode="after")
    def _identity_needs_project(self) -> Self:
        if (self.service_account_file is not None or self.adc) and self.project is None:
            raise ValueError("service-account-file and adc need a project")
        return self

    @property
    def identity(self) -> bool:
        """Whether tokens come from a Google identity (refreshed by google-auth) rather than a fixed key."""
        return self.service_account_file is not None or self.adc is True

    @property
    def scope(self) -> str | None:
        return f"projects/{self.project}/locations/{self.location}" if self.project else None

    def default_base_url(self, catalog: str | None) -> str | None:
        """The regional endpoint of ``project``; without a project, the catalog's (API-key express mode)."""
        if not self.project:
            return catalog
        host = "aiplatform" if self.location == "global" else f"{self.location}-aiplatform"
        return f"https://{host}.googleapis.com"


class AzureEntra(_Block):
    """Microsoft Entra ID for Azure OpenAI. With a client secret: that service principal. Without: azure-identity's
    default chain (environment, AKS Workload Identity, managed identity, the Azure CLI), ``client-id`` choosing
    the managed or workload identity when several are bound. ``authority``: another cloud's login host."""

    tenant_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]{1,128}$")] | None = None
    client_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]{1,64}$")] | None = None
    client_secret: SecretStr | None = None
    client_secret_file: NonEmpty | None = None
    authority: str | None = None

    @field_validator("authority")
    @classmethod
    def _authority(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value, schemes=("https",))

    @model_validator(mode="after")
    def _secret_needs_ids(self) -> Self:
        if self.client_secret is not None and self.client_secret_file is not None:
            raise ValueError("client-secret and client-secret-file are exclusive")
        secret = self.client_secret is not None or self.client_secret_file is not None
        if secret and (self.tenant_id is None or self.client_id is None):
            raise ValueError("a client secret needs tenant-id and client-id")
        return self


_DEPLOYMENT = re.compile(r"(?!\.\.?$)[A-Za-z0-9._-]{1,64}")


class AzureOpenAICredential(_Routed, KeySource):
    """Azure OpenAI: a resource's deployments (``models[].name`` is the deployment, ``alias`` what clients ask
    for) with ``api-version``, or its v1 API (``api: v1``, model names as they are). An ``api-key`` or Entra ID."""

    SOURCES = (("api_key",), ("api_key_file",), ("entra",))

    entra: AzureEntra | None = None
    resource: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")] | None = None
    api: Literal["deployments", "v1"] = "deployments"
    api_version: Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}(-preview)?$")] = "2024-10-21"

    @model_validator(mode="after")
    def _where(self) -> Self:
        if (self.resource is None) == (self.base_url is None):
            raise ValueError("exactly one of resource or base-url is required")
        if not self.models:
            raise ValueError("models: list the deployments (name: the deployment, alias: the model clients ask for)")
        unfit = [m.name for m in self.models if not _DEPLOYMENT.fullmatch(m.name)]
        if unfit:  # the name goes into the URL's path: nothing that could leave it (/, ?, #, ..)
            raise ValueError(f"models: {unfit[0]!r} is not a deployment name (letters, digits, '.', '_', '-')")
        return self

    @property
    def endpoint(self) -> str:
        """The resource's root, ``https://{resource}.openai.azure.com``, or ``base-url``."""
        return self.base_url or f"https://{self.resource}.openai.azure.com"

    def upstream_base_url(self, catalog: str | None) -> str:
        """What the operations' paths go below: ``/openai`` (deployment URLs) or ``/openai/v1``."""
        return self.endpoint + ("/openai/v1" if self.api == "v1" else "/openai")


class SessionCredential(_Routed, KeySource):
    """A key or an IDE session token file: minimax, roo and kilo accept either."""

    SOURCES = (("api_key",), ("api_key_file",), ("token_file",))

    token_file: NonEmpty | None = None


class CompatKey(KeySource):
    """One key of an openai-compatibility provider, optionally through its own egress proxy and weight."""

    proxy_url: str | None = None
    weight: Weight | None = None  # this key's, over its provider's

    @field_validator("proxy_url")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        return _Routed._proxy_url(value)


class CompatProvider(_Routed):
    """An OpenAI-shaped endpoint registered under its own provider ``name``."""

    name: Annotated[str, Field(pattern=_PREFIX_PATTERN, max_length=63)]
    base_url: str
    api_key_entries: tuple[CompatKey, ...] = Field(min_length=1)
    models_endpoint: str = "/models"
    disabled: bool = False


class KiroCredential(_Routed):
    """Kiro (Amazon Q / CodeWhisperer): the IDE's token file or explicit tokens."""

    token_file: NonEmpty | None = None
    access_token: SecretStr | None = None
    refresh_token: SecretStr | None = None
    profile_arn: str | None = None
    region: str = "us-east-1"
    agent_task_type: Literal["", "vibe", "dev", "chat"] = ""
    preferred_endpoint: Literal["", "ide", "cli", "codewhisperer", "amazonq"] = ""
    refresh_url: str | None = None  # where tokens are refreshed, instead of Kiro's own hosts (tests, private proxies)

    @field_validator("refresh_url")
    @classmethod
    def _refresh_url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value)

    SOURCES = (("token_file",), ("access_token", "refresh_token"))


class CursorCredential(_Routed):
    """Cursor through a cursor-api sidecar: a token file or an auth token."""

    token_file: NonEmpty | None = None
    auth_token: SecretStr | None = None
    cursor_api_url: str | None = None

    SOURCES = (("token_file",), ("auth_token",))


class AmpCredential(_Routed):
    """Amp CLI: a token file or an upstream key for ampcode.com."""

    token_file: NonEmpty | None = None
    upstream_api_key: SecretStr | None = None
    upstream_url: str | None = None

    SOURCES = (("token_file",), ("upstream_api_key",))


class BedrockCredential(_Routed):
    """AWS Bedrock, signed with SigV4: keys from botocore's default chain (environment, IRSA, EKS Pod Identity,
    instance metadata), from a named shared ``profile``, or given (inline or, better, as files of a Secret)."""

    SECRET_FILES: ClassVar[tuple[str, ...]] = ("access_key_id", "secret_access_key", "session_token")

    region: Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")]
    profile: NonEmpty | None = None
    access_key_id: SecretStr | None = None
    access_key_id_file: NonEmpty | None = None
    secret_access_key: SecretStr | None = None
    secret_access_key_file: NonEmpty | None = None
    session_token: SecretStr | None = None
    session_token_file: NonEmpty | None = None

    @model_validator(mode="after")
    def _keys(self) -> Self:
        given = {name: getattr(self, name) is not None or getattr(self, f"{name}_file") is not None
                 for name in self.SECRET_FILES}  # fmt: skip
        if any(getattr(self, name) is not None and getattr(self, f"{name}_file") is not None for name in given):
            raise ValueError("a key is given inline or by file, not both")
        if given["access_key_id"] != given["secret_access_key"]:
            raise ValueError("access-key-id and secret-access-key go together")
        if given["session_token"] and not given["access_key_id"]:
            raise ValueError("session-token needs access-key-id and secret-access-key")
        if self.profile is not None and given["access_key_id"]:
            raise ValueError("at most one of profile or the keys")
        return self

    def default_base_url(self, catalog: str | None) -> str | None:
        return f"https://bedrock-runtime.{self.region}.amazonaws.com"


class Routing(_Block):
    strategy: Literal["round-robin", "fill-first"] = "round-robin"


class Cooldowns(_Block):
    """How long a (credential, model) rests after each kind of failure, in seconds.

    Transient faults (5xx, 408, dropped connections, timeouts) eject as Envoy's outlier detection does: only after
    ``consecutive-failures`` in a row, for ``transient`` times the number of recent ejections up to ``transient-max``,
    and never more than ``max-ejection-percent`` of a model's credentials at once. One 5xx among successes rests
    nothing. 429, 401/402/403 and 404 keep cliproxyapi++'s verdicts: the provider said what is wrong.
    """

    quota_base: Annotated[float, Field(ge=0)] = 1.0
    quota_max: Annotated[float, Field(ge=0)] = 1800.0  # also caps an upstream's Retry-After
    auth: Annotated[float, Field(ge=0)] = 1800.0
    not_found: Annotated[float, Field(ge=0)] = 43200.0
    transient: Annotated[float, Field(ge=0)] = 30.0
    transient_max: Annotated[float, Field(ge=0)] = 300.0
    consecutive_failures: Annotated[int, Field(ge=1, le=1000)] = 3
    max_ejection_percent: Annotated[int, Field(ge=0, le=100)] = 50


class Timeouts(_Block):
    """Upstream timeouts in seconds. ``read`` bounds any silence of the upstream, the first byte included;
    ``total`` (off by default) one whole non-streaming attempt, from connecting to the last byte. A stream is
    bounded by ``read`` alone: a long answer streams for as long as it keeps coming."""

    connect: Annotated[float, Field(gt=0)] = 10.0
    read: Annotated[float, Field(gt=0)] = 600.0
    total: Annotated[float, Field(gt=0)] | None = None


class ClientTimeouts(_Block):
    """Seconds a client may take to send its request: slow-loris defence for a shared gateway.

    ``headers`` bounds a connection's wait for a request's headers, idle keep-alive included (read at start);
    ``body`` bounds reading the body once the headers are in (live).
    """

    headers: Annotated[float, Field(gt=0)] = 30.0
    body: Annotated[float, Field(gt=0)] = 60.0


class Streaming(_Block):
    keepalive_seconds: Annotated[float, Field(ge=0)] = 15.0


class ClientRateLimit(_Block):
    """What one client key may use: requests and tokens per minute, and requests in flight at once."""

    rpm: Annotated[int, Field(gt=0)] | None = None
    tpm: Annotated[int, Field(gt=0)] | None = None
    max_parallel: Annotated[int, Field(gt=0)] | None = None


class Budget(_Block):
    """Tokens and/or US dollars a client key may spend per calendar day or month (UTC)."""

    tokens: Annotated[int, Field(gt=0)] | None = None
    usd: Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)] | None = None
    per: Literal["day", "month"] = "month"

    @model_validator(mode="after")
    def _some_amount(self) -> Self:
        if self.tokens is None and self.usd is None:
            raise ValueError("a budget needs tokens, usd or both")
        return self


class ModelPrice(_Block):
    """A model's price in US dollars per million tokens; ``cached-input`` defaults to ``input``."""

    input: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
    output: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
    cached_input: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] | None = None


class RequestLog(_Block):
    """One JSON line per request (never a key or a body): to ``path``, or to standard output when it is ``stdout``."""

    enabled: bool = False
    path: NonEmpty = "stdout"


_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _client_name(value: str) -> str:
    """A name that is safe as it is wherever it is shown: a Redis hash tag (no braces), a metric label, a log line."""
    if not _CLIENT_NAME.fullmatch(value):
        raise ValueError("a client name is ASCII letters, digits, '.', '_' and '-', from a letter or digit (it names "
                         "the client's Redis counters, metric labels and log lines)")  # fmt: skip
    return value


# 127: room for the operator's <namespace>.<name> of a ClientKey (63 at most each: a namespace, the CRD's rule)
ClientName = Annotated[str, Field(max_length=127), AfterValidator(_client_name)]


class ClientKey(KeySource):
    """A named client identity: its key, the models it may use (globs), its limits and when it expires."""

    name: ClientName
    models: tuple[NonEmpty, ...] = ("*",)
    rate_limit: ClientRateLimit | None = None
    budget: Budget | None = None
    expires: datetime | None = None

    @field_validator("expires")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must name its time zone (e.g. 2027-01-01T00:00:00Z)")
        return value


class Redis(_Block):
    """Where limits and cooldowns are shared between replicas; ``on-error`` is what a check does while it is
    unreachable.

    ``url`` names one server (``redis://``, ``rediss://``, ``unix://``), a Sentinel-watched master
    (``redis+sentinel://[:password@]host:26379,host2:26379/master[/db]``), or with ``cluster: true`` a
    Redis Cluster node to discover the others from.
    """

    url: Annotated[str, Field(pattern=r"^(redis|rediss|unix|redis\+sentinel|rediss\+sentinel)://")]
    cluster: bool = False
    timeout: Annotated[float, Field(gt=0, le=5)] = 0.05
    on_error: Literal["allow", "deny"] = "allow"

    @model_validator(mode="after")
    def _one_topology(self) -> Self:
        sentinel = "+sentinel://" in self.url
        if self.cluster and not self.url.startswith(("redis://", "rediss://")):
            raise ValueError("cluster: true takes a redis:// or rediss:// url (one node of the cluster)")
        if sentinel and not urlsplit(self.url).path.strip("/"):
            raise ValueError("a redis+sentinel:// url names its master: redis+sentinel://host:26379/mymaster")
        return self


class ProxyConfig(_Block):
    """The whole document. Provider lists are keyed by their catalog block name."""

    host: str = ""
    port: Annotated[int, Field(ge=1, le=65535)] = 8317
    # /metrics on its own port, without a client key; unset: on the main port, also without one (as before).
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    api_keys: tuple[SecretStr, ...] = ()
    api_keys_file: NonEmpty | None = None
    allow_unauthenticated: bool = False
    client_keys: tuple[ClientKey, ...] = ()
    redis: Redis | None = None
    # Prices per million tokens by model glob (the exposed or the upstream id); they win over genai-prices' table.
    pricing: dict[NonEmpty, ModelPrice] = Field(default_factory=dict)
    request_log: RequestLog = RequestLog()
    force_model_prefix: bool = False
    routing: Routing = Routing()
    request_retry: Annotated[int, Field(ge=0, le=10)] = 3
    max_retry_interval: Annotated[float, Field(ge=0)] = 30.0
    max_retry_credentials: Annotated[int, Field(ge=0)] = 0
    disable_cooling: bool = False
    cooldowns: Cooldowns = Cooldowns()
    timeouts: Timeouts = Timeouts()
    client_timeouts: ClientTimeouts = ClientTimeouts()
    streaming: Streaming = Streaming()
    max_body_bytes: Annotated[int, Field(gt=0)] = 32 * 1024 * 1024
    proxy_url: str | None = None
    # What a translated request does with tools only OpenAI runs (web_search...): see hosted_tools.py.
    hosted_tools: Literal["drop", "refuse"] = "drop"
    # False where someone else (the Kubernetes operator) refreshes session tokens: the proxy only adopts them.
    token_refresh: bool = True
    # model -> the models tried, in order, when it fails (retries exhausted, 429, or a context-window refusal).
    fallbacks: dict[NonEmpty, Annotated[tuple[NonEmpty, ...], Field(max_length=MAX_FALLBACKS)]] = Field(
        default_factory=dict
    )
    _ignored: tuple[str, ...] = PrivateAttr(default=())  # what the document held that cliproxy does not implement

    claude_api_key: tuple[ApiKeyCredential, ...] = ()
    gemini_api_key: tuple[ApiKeyCredential, ...] = ()
    codex_api_key: tuple[ApiKeyCredential, ...] = ()
    vertex_api_key: tuple[VertexCredential, ...] = ()
    azure_openai: tuple[AzureOpenAICredential, ...] = ()
    bedrock: tuple[BedrockCredential, ...] = ()
    deepseek: tuple[ApiKeyCredential, ...] = ()
    groq: tuple[ApiKeyCredential, ...] = ()
    mistral: tuple[ApiKeyCredential, ...] = ()
    openrouter: tuple[ApiKeyCredential, ...] = ()
    together: tuple[ApiKeyCredential, ...] = ()
    fireworks: tuple[ApiKeyCredential, ...] = ()
    novita: tuple[ApiKeyCredential, ...] = ()
    siliconflow: tuple[ApiKeyCredential, ...] = ()
    openai_compatibility: tuple[CompatProvider, ...] = ()
    minimax: tuple[SessionCredential, ...] = ()
    roo: tuple[SessionCredential, ...] = ()
    kilo: tuple[SessionCredential, ...] = ()
    kiro: tuple[KiroCredential, ...] = ()
    cursor: tuple[CursorCredential, ...] = ()
    ampcode: tuple[AmpCredential, ...] = ()

    @field_validator("proxy_url")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        return _Routed._proxy_url(value)

    @field_validator("client_keys")
    @classmethod
    def _unique_clients(cls, value: tuple[ClientKey, ...]) -> tuple[ClientKey, ...]:
        names = [client.name for client in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"client names must be unique: {', '.join(repeated)}")
        return value

    @field_validator("fallbacks")
    @classmethod
    def _fallbacks(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for model, others in value.items():
            if model in others:
                raise ValueError(f"{model}: a model cannot fall back to itself")
            if len(set(others)) != len(others):
                raise ValueError(f"{model}: a fallback is listed twice")
        return value

    @property
    def ignored(self) -> tuple[str, ...]:
        """One note per cliproxyapi++ key the document held that cliproxy does not implement (see ``compat``)."""
        return self._ignored

    def blocks(self) -> list[tuple[str, tuple[_Routed, ...]]]:
        """Every provider block by its catalog name, in catalog order."""
        return [(block, getattr(self, block.replace("-", "_"))) for block in KINDS]


log = logging.getLogger("cliproxy.config")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when the wheel has it


class ConfigError(ValueError):
    """A config document that cannot be used; the message names each failing path."""


class ConfigPending(ConfigError):
    """A config that is not there yet, or names objects that have not arrived yet (a Secret a moment behind its
    ConfigMap). ``indefinite``: waiting is normal however long it takes (no ConfigMap before the first render)."""

    def __init__(self, message: str, *, indefinite: bool = False) -> None:
        super().__init__(message)
        self.indefinite = indefinite


def format_location(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, ``openrouter[0].base-url: must be ...``; never echoes input values."""
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # Lists are held as tuples (immutable snapshots); speak YAML's language in messages.
        message = re.sub(r"^Value error, ", "", item["msg"]).replace("Tuple", "List").replace("tuple", "list")
        lines.append(f"{format_location(loc)}: {message}")
    return "; ".join(lines)


#: C0 controls and DEL: CR/LF in a header or URL would smuggle a second request onto a pooled connection.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def control_character_path(document: Any, loc: tuple[int | str, ...] = ()) -> tuple[int | str, ...] | None:
    """Where the first string (key or value) holding a control character is, anywhere in the document."""
    if isinstance(document, str):
        return loc if CONTROL_CHARACTERS.search(document) else None
    items = (
        document.items() if isinstance(document, dict) else enumerate(document) if isinstance(document, list) else ()
    )
    for key, value in items:
        if isinstance(key, str) and CONTROL_CHARACTERS.search(key):
            return (*loc, key.encode("unicode_escape").decode())
        found = control_character_path(value, (*loc, key))
        if found is not None:
            return found
    return None


def parse_config(document: Any) -> ProxyConfig:
    """Validate a decoded document, raising :class:`ConfigError` with path-named messages.

    An empty document is refused: it would drop every model and every client key at once (an editor's
    truncated save, an empty volume), so the last good config keeps serving instead.
    """
    if document is None or document == {}:
        raise ConfigError("(top level): the config is empty")
    if not isinstance(document, dict):
        raise ConfigError("(top level): the config must be a mapping")
    unsafe = control_character_path(document)
    if unsafe is not None:
        raise ConfigError(f"{format_location(unsafe)}: must not contain control characters (CR, LF, NUL...)")
    try:
        stripped, ignored = compat.strip(document)
        config = ProxyConfig.model_validate(stripped)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None
    config._ignored = tuple(ignored.notes())
    for note in config._ignored:
        log.warning("config: %s", note)
    return config


def parse_config_text(text: bytes | str) -> ProxyConfig:
    """Parse YAML (JSON is YAML too, and rendered configs are JSON: parsed by the fast path) into a config."""
    if text.lstrip()[:1] in (b"{", "{"):
        try:
            return parse_config(orjson.loads(text))
        except orjson.JSONDecodeError as error:
            raise ConfigError(f"(top level): not valid JSON at line {error.lineno}, column {error.colno}") from None
    try:
        document = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"(top level): not valid YAML{where}") from None
    return parse_config(document)
