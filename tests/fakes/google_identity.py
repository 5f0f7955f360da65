"""A fake Google OAuth token endpoint for service accounts, and the key file that points google-auth at it.

It speaks RFC 7523 as ``oauth2.googleapis.com/token`` does: a form POST with ``grant_type`` jwt-bearer and an
RS256 ``assertion`` whose claims name the account (``iss``), the scope and Google's endpoint (``aud``). The signature
is checked here with ``cryptography`` against the account's public key, independently of google-auth. Tokens are
short-lived on purpose: the Vertex fake refuses an expired one, so a test can watch the proxy refresh.
"""

from __future__ import annotations

import base64
import functools
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
#: The audience Google's token endpoint requires of an assertion, wherever the request is sent (``token_uri``).
AUDIENCE = "https://oauth2.googleapis.com/token"


@functools.cache
def account_key(number: int = 0) -> rsa.RSAPrivateKey:
    """A service account's RSA key; generated once per number and run (2048-bit generation is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class GoogleIdentity:
    """The endpoint's state: the account it knows, the tokens it issued and until when they are good."""

    email: str = "proxy@demo-project.iam.gserviceaccount.com"
    lifetime: float = 3600.0
    key: rsa.RSAPrivateKey = field(default_factory=account_key)
    issued: dict[str, float] = field(default_factory=dict)  # token -> expiry (epoch seconds)
    grants: int = 0  # assertions accepted
    refusals: list[str] = field(default_factory=list)  # why assertions were refused
    url: str = ""  # the token endpoint, once served

    def valid(self, token: str) -> bool:
        expires = self.issued.get(token)
        return expires is not None and time.time() < expires

    def key_file(self, project: str = "demo-project") -> dict[str, Any]:
        """The service-account JSON the Cloud console hands out, its ``token_uri`` pointing here."""
        pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode()  # fmt: skip
        return {
            "type": "service_account", "project_id": project, "private_key_id": "k1", "private_key": pem,
            "client_email": self.email, "client_id": "1234567890", "token_uri": self.url,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        }  # fmt: skip

    def check(self, assertion: str) -> str | None:
        """Why the assertion is refused, or None: signed by the account's key, addressed here, current."""
        try:
            head, claims, signature = assertion.split(".")
            header = orjson.loads(_b64decode(head))
            payload = orjson.loads(_b64decode(claims))
        except (ValueError, orjson.JSONDecodeError):
            return "malformed assertion"
        if header.get("alg") != "RS256":
            return "alg must be RS256"
        try:
            self.key.public_key().verify(_b64decode(signature), f"{head}.{claims}".encode(), padding.PKCS1v15(),
                                         hashes.SHA256())  # fmt: skip
        except InvalidSignature:
            return "Invalid JWT Signature."
        now = time.time()
        if payload.get("iss") != self.email:
            return "iss is not the account"
        if payload.get("aud") != AUDIENCE:
            return "aud is not Google's token endpoint"
        if CLOUD_PLATFORM not in str(payload.get("scope", "")).split():
            return "scope lacks cloud-platform"
        if not (payload.get("iat", 0) - 300 <= now < payload.get("exp", 0)):
            return "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe."
        return None


GOOGLE_IDENTITY = web.AppKey("google_identity", GoogleIdentity)


async def _token(request: web.Request) -> web.Response:
    state = request.app[GOOGLE_IDENTITY]
    form = await request.post()
    if form.get("grant_type") != JWT_BEARER:
        return web.json_response({"error": "unsupported_grant_type"}, status=400)
    problem = state.check(str(form.get("assertion", "")))
    if problem is not None:
        state.refusals.append(problem)
        return web.json_response({"error": "invalid_grant", "error_description": problem}, status=400)
    state.grants += 1
    token = f"ya29.{secrets.token_urlsafe(24)}"
    state.issued[token] = time.time() + state.lifetime
    life = int(state.lifetime) if state.lifetime >= 1 else state.lifetime  # Google's are whole seconds; tests' may not
    return web.json_response({"access_token": token, "expires_in": life, "token_type": "Bearer"})


async def start_google_identity(aiohttp_server: Callable[..., Awaitable[TestServer]],
                                **options: Any) -> GoogleIdentity:  # fmt: skip
    state = GoogleIdentity(**options)
    app = web.Application()
    app[GOOGLE_IDENTITY] = state
    app.router.add_post("/token", _token)
    server = await aiohttp_server(app)
    state.url = str(server.make_url("/token"))
    return state
