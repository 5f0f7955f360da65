"""What the operator uses of the proxy, by name: the config it renders, the provider catalog, the token formats
and the pure refresh.

Importing this loads no codec, no server and no connection pool: the operator renders and refreshes, it never
serves (``tests/operator/test_contract.py`` holds it to that).
"""

from __future__ import annotations

from .catalog import KINDS, ProviderKind, Wire
from .config import MAX_FALLBACKS, ConfigError, ProxyConfig, header_problem, parse_config
from .oauth.base import Post, RefreshRejected, RefreshRequest, TokenError, TokenFormat, TokenSet, refresh_once
from .oauth.tokens import registration_name, token_format

__all__ = [
    "KINDS", "MAX_FALLBACKS", "ConfigError", "Post", "ProviderKind", "ProxyConfig", "RefreshRejected", "RefreshRequest",
    "TokenError", "TokenFormat", "TokenSet", "Wire", "header_problem", "parse_config", "refresh_once",
    "registration_name", "token_format",
]  # fmt: skip
