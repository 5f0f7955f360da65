"""What the operator uses of the proxy, by name: the config it renders, the provider catalog, the token formats,
the pure refresh, and where client counters live in Redis and how to reach it (a ClientKey's status).

Importing this loads no codec, no server and no connection pool: the operator renders and refreshes, it never
serves (``tests/operator/test_contract.py`` holds it to that).
"""

from __future__ import annotations

from .catalog import KINDS, ProviderKind, Wire
from .config import MAX_FALLBACKS, Budget, ConfigError, ProxyConfig, header_problem, parse_config
from .counters import budget_key, period, redis_from_env, spend_key
from .oauth.base import Post, RefreshRejected, RefreshRequest, TokenError, TokenFormat, TokenSet, refresh_once
from .oauth.tokens import registration_name, token_format
from .store import UNAVAILABLE as REDIS_UNAVAILABLE
from .store import Client as RedisClient
from .store import connect as connect_redis

__all__ = [
    "KINDS", "MAX_FALLBACKS", "REDIS_UNAVAILABLE", "Budget", "ConfigError", "Post", "ProviderKind", "ProxyConfig",
    "RedisClient", "RefreshRejected", "RefreshRequest", "TokenError", "TokenFormat", "TokenSet", "Wire", "budget_key",
    "connect_redis", "header_problem", "parse_config", "period", "redis_from_env", "refresh_once",
    "registration_name", "spend_key", "token_format",
]  # fmt: skip
