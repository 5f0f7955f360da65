"""The token format of each session block: what the proxy and the operator parse and refresh alike."""

from __future__ import annotations

import orjson

from .base import TokenFormat
from .formats import StaticKeyFormat
from .kiro import KiroTokenFormat

#: The key each vendor's own tool writes, looked up in this order (a bare key in the file works too).
KEY_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "cursor": (("accessToken",), ("access_token",), ("api_key",)),  # cursor-agent auth.json, or a sidecar key
    "minimax": (("access_token",), ("api_key",)),  # cliproxyapi++'s order
    "roo": (("token",),),  # the Roo CLI's cli-credentials.json
    "kilo": (("kilo", "access"), ("kilo", "key"), ("kilocodeToken",)),  # kilo auth.json, cliproxyapi++'s file
    "ampcode": (("apiKey@https://ampcode.com/",), ("apiKey",)),  # the Amp CLI's secrets.json
}


def token_format(block: str, refresh_url: str | None = None, registration: bytes | None = None) -> TokenFormat:
    """The token file format of a session block; ``refresh_url`` replaces the vendor's refresh host, and
    ``registration`` is a Kiro IdC login's client registration (see ``vendors.registration``)."""
    if block == "kiro":
        return KiroTokenFormat(social_url=refresh_url, oidc_url=refresh_url, registration=registration)
    return StaticKeyFormat(block, *KEY_PATHS[block])


def registration_name(token_file: bytes) -> str | None:
    """Where an IdC / Builder ID login's client registration is: the Kiro IDE keeps it beside the token file
    as ``<clientIdHash>.json``, and refreshing needs its client id and secret. None for other logins."""
    try:
        document = orjson.loads(token_file)
    except orjson.JSONDecodeError:
        return None
    hashed = document.get("clientIdHash") if isinstance(document, dict) else None
    if not isinstance(hashed, str) or not hashed.isalnum() or document.get("clientId"):
        return None
    return f"{hashed}.json"
