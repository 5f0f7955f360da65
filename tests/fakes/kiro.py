"""A fake Kiro vendor: the token refresh endpoints and ``generateAssistantResponse``, for tests.

It is not a model, but it is strict about the wire as the real service is: a bearer token it issued and that has
not expired (else 403 with Kiro's ``{"message", "reason"}``), the content type the Kiro IDE's SDK sends
(``application/json`` on ``/generateAssistantResponse``, or ``application/x-amz-json-1.0`` with the
``x-amz-target`` of the JSON-RPC style), and a body whose shape it checks field by field (unknown fields refused,
strict user/assistant alternation, every ``toolResult`` answering a ``toolUse`` of the assistant turn just before,
and every such call answered). Invalid bodies get Kiro's 400 ``Improperly formed request.`` and are recorded with
the problem. Answers stream in event-stream framing: the echoed text in several ``assistantResponseEvent``s, or, when
tools are offered and the current turn carries no tool results, a call of the first tool as ``toolUseEvent``
fragments; then ``meteringEvent`` and ``contextUsageEvent``.

Refresh: social logins at ``POST /refreshToken``, IdC / Builder ID at ``POST /token`` (AWS SSO OIDC
``CreateToken``). Refresh tokens rotate on every use; ``revoke`` makes one (or all) invalid.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from cliproxy_proxy.translate.eventstream import event, exception

TARGET = "AmazonCodeWhispererStreamingService.GenerateAssistantResponse"
MODELS = frozenset({"auto", "claude-sonnet-4.5", "claude-sonnet-4", "claude-haiku-4.5", "claude-opus-4.5"})
CLIENT_ID, CLIENT_SECRET = "fake-client-id", "fake-client-secret"
PROFILE_ARN = "arn:aws:codewhisperer:us-east-1:123456789012:profile/FAKEPROFILE"
_IMAGE_FORMATS = frozenset({"png", "jpeg", "gif", "webp"})


class Problem(Exception):
    """A request the real service would refuse with 400 ``Improperly formed request.``."""


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any
    problem: str | None = None


@dataclass
class Fault:
    """What the next chat call does instead of answering: an HTTP error or an in-stream exception."""

    status: int | None = None
    body: dict[str, Any] | None = None
    exception: str | None = None  # an :exception-type sent after the first text event


@dataclass
class KiroVendor:
    token_ttl: float = 3600.0
    profile_arn: str = PROFILE_ARN
    words_per_event: int = 2
    json_chunk: int = 7
    access: dict[str, float] = field(default_factory=dict, repr=False)  # token -> expiry (epoch)
    refresh: set[str] = field(default_factory=set, repr=False)
    received: list[Received] = field(default_factory=list)
    refreshes: list[dict[str, Any]] = field(default_factory=list, repr=False)
    faults: deque[Fault] = field(default_factory=deque)
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def issue(self, ttl: float | None = None) -> tuple[str, str]:
        """A fresh access token (expiring in ``ttl`` or ``token_ttl`` seconds) and refresh token."""
        number = next(self._counter)
        access, refresh = f"aoa-{number}-{secrets.token_hex(8)}", f"aor-{number}-{secrets.token_hex(8)}"
        self.access[access] = time.time() + (self.token_ttl if ttl is None else ttl)
        self.refresh.add(refresh)
        return access, refresh

    def revoke(self, refresh: str | None = None) -> None:
        """Invalidates one refresh token, or every one (and every access token) when none is named."""
        if refresh is None:
            self.refresh.clear()
            self.access.clear()
        else:
            self.refresh.discard(refresh)

    def valid(self, access: str) -> bool:
        return self.access.get(access, 0.0) > time.time()

    def _rotate(self, refresh: str) -> tuple[str, str] | None:
        if refresh not in self.refresh:
            return None
        self.refresh.discard(refresh)
        return self.issue()


KIRO_VENDOR = web.AppKey("kiro_vendor", KiroVendor)


def _kiro_error(status: int, message: str, reason: str | None = None) -> web.Response:
    return web.json_response({"message": message, "reason": reason}, status=status)


# -- refresh --------------------------------------------------------------------------------------------


async def _social_refresh(request: web.Request) -> web.Response:
    vendor = request.app[KIRO_VENDOR]
    body = await _json(request)
    vendor.refreshes.append({"path": request.path, "body": body})
    if request.content_type != "application/json" or not isinstance(body, dict) or set(body) != {"refreshToken"}:
        return _kiro_error(400, "Invalid request: a JSON body with refreshToken only is expected")
    issued = vendor._rotate(str(body["refreshToken"]))
    if issued is None:
        return _kiro_error(401, "Invalid refresh token provided", "INVALID_REFRESH_TOKEN")
    access, refresh = issued
    return web.json_response({"accessToken": access, "refreshToken": refresh, "expiresIn": int(vendor.token_ttl),
                              "profileArn": vendor.profile_arn})  # fmt: skip


async def _oidc_token(request: web.Request) -> web.Response:
    vendor = request.app[KIRO_VENDOR]
    body = await _json(request)
    vendor.refreshes.append({"path": request.path, "body": body})
    expected = {"clientId", "clientSecret", "grantType", "refreshToken"}
    if request.content_type != "application/json" or not isinstance(body, dict) or set(body) != expected:
        return web.json_response({"error": "invalid_request", "error_description": "malformed"}, status=400)
    if body["grantType"] != "refresh_token":
        return web.json_response({"error": "unsupported_grant_type"}, status=400)
    if body["clientId"] != CLIENT_ID or body["clientSecret"] != CLIENT_SECRET:
        return web.json_response({"error": "invalid_client", "error_description": "Invalid client"}, status=401)
    issued = vendor._rotate(str(body["refreshToken"]))
    if issued is None:
        return web.json_response({"error": "invalid_grant", "error_description": "Invalid refresh token"}, status=400)
    access, refresh = issued
    return web.json_response({"accessToken": access, "refreshToken": refresh, "expiresIn": int(vendor.token_ttl),
                              "tokenType": "Bearer"})  # fmt: skip


# -- validation -----------------------------------------------------------------------------------------


def _keys(node: Any, where: str, required: set[str], optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise Problem(f"{where}: must be an object")
    if missing := required - set(node):
        raise Problem(f"{where}: missing {sorted(missing)}")
    if unknown := set(node) - required - optional:
        raise Problem(f"{where}: unknown fields {sorted(unknown)}")
    return node


def _string(node: dict[str, Any], key: str, where: str, empty: bool = False) -> str:
    value = node.get(key)
    if not isinstance(value, str) or (not empty and not value):
        raise Problem(f"{where}.{key}: must be a non-empty string")
    return value


def _user(message: Any, where: str, answering: set[str], current: bool) -> set[str]:
    optional = frozenset({"images", "userInputMessageContext", "userIntent"})
    node = _keys(message, where, {"content", "modelId", "origin"}, optional)
    _string(node, "content", where)
    if node["modelId"] not in MODELS:
        raise Problem(f"{where}.modelId: Invalid model. Please select a different model to continue.")
    if node["origin"] not in ("AI_EDITOR", "CLI"):
        raise Problem(f"{where}.origin: unknown origin {node['origin']!r}")
    for index, image in enumerate(node.get("images") or []):
        at = f"{where}.images[{index}]"
        _keys(image, at, {"format", "source"})
        if image["format"] not in _IMAGE_FORMATS:
            raise Problem(f"{at}.format: unsupported {image['format']!r}")
        source = _keys(image["source"], f"{at}.source", {"bytes"})
        try:
            base64.b64decode(_string(source, "bytes", f"{at}.source"), validate=True)
        except (binascii.Error, ValueError):
            raise Problem(f"{at}.source.bytes: not base64") from None
    context = _keys(node.get("userInputMessageContext", {}), f"{where}.userInputMessageContext", set(),
                    frozenset({"toolResults", "tools"}))  # fmt: skip
    if "tools" in context and not current:
        raise Problem(f"{where}: tools belong in the current message")
    for index, tool in enumerate(context.get("tools") or []):
        at = f"{where}.userInputMessageContext.tools[{index}]"
        spec = _keys(_keys(tool, at, {"toolSpecification"})["toolSpecification"], f"{at}.toolSpecification",
                     {"name", "description", "inputSchema"})  # fmt: skip
        _string(spec, "name", at)
        _string(spec, "description", at)
        if not isinstance(_keys(spec["inputSchema"], f"{at}.inputSchema", {"json"})["json"], dict):
            raise Problem(f"{at}.inputSchema.json: must be a JSON Schema object")
    answered: set[str] = set()
    for index, result in enumerate(context.get("toolResults") or []):
        at = f"{where}.userInputMessageContext.toolResults[{index}]"
        node = _keys(result, at, {"toolUseId", "content", "status"})
        ident = _string(node, "toolUseId", at)
        if ident not in answering:
            raise Problem(f"{at}.toolUseId: {ident!r} answers no toolUse of the previous assistant message")
        if node["status"] not in ("success", "error"):
            raise Problem(f"{at}.status: must be success or error")
        if not isinstance(node["content"], list) or not node["content"]:
            raise Problem(f"{at}.content: must be a non-empty list")
        for item in node["content"]:
            _string(_keys(item, f"{at}.content[]", {"text"}), "text", f"{at}.content[]", empty=True)
        answered.add(ident)
    if unanswered := answering - answered:
        raise Problem(f"{where}: toolUses {sorted(unanswered)} have no toolResult")
    return answered


def _assistant(message: Any, where: str) -> set[str]:
    node = _keys(message, where, {"content"}, frozenset({"toolUses", "messageId"}))
    _string(node, "content", where)
    calls: set[str] = set()
    for index, use in enumerate(node.get("toolUses") or []):
        at = f"{where}.toolUses[{index}]"
        _keys(use, at, {"toolUseId", "name", "input"})
        calls.add(_string(use, "toolUseId", at))
        _string(use, "name", at)
        if not isinstance(use["input"], dict):
            raise Problem(f"{at}.input: must be an object")
    return calls


def validate(body: Any, profile_arn: str) -> str | None:
    """What the real service would refuse in a ``generateAssistantResponse`` body, or None."""
    try:
        root = _keys(body, "body", {"conversationState"}, frozenset({"profileArn"}))
        if "profileArn" in root and root["profileArn"] != profile_arn:
            raise Problem("profileArn: not this account's profile")
        state = _keys(root["conversationState"], "conversationState", {"chatTriggerType", "currentMessage"},
                      frozenset({"conversationId", "history", "agentTaskType", "agentContinuationId"}))  # fmt: skip
        if state["chatTriggerType"] not in ("MANUAL", "DIAGNOSTIC", "INLINE_CHAT"):
            raise Problem("conversationState.chatTriggerType: unknown trigger")
        if "conversationId" in state:
            _string(state, "conversationId", "conversationState")
        history = state.get("history") or []
        if not isinstance(history, list):
            raise Problem("conversationState.history: must be a list")
        calls: set[str] = set()
        for index, entry in enumerate(history):
            at = f"conversationState.history[{index}]"
            expected = "userInputMessage" if index % 2 == 0 else "assistantResponseMessage"
            if not isinstance(entry, dict) or list(entry) != [expected]:
                raise Problem(f"{at}: expected {expected} (history alternates, starting with the user)")
            if expected == "userInputMessage":
                _user(entry[expected], f"{at}.{expected}", calls, current=False)
                calls = set()
            else:
                calls = _assistant(entry[expected], f"{at}.{expected}")
        if len(history) % 2:
            raise Problem("conversationState.history: must end with an assistantResponseMessage")
        current = _keys(state["currentMessage"], "conversationState.currentMessage", {"userInputMessage"})
        _user(current["userInputMessage"], "conversationState.currentMessage.userInputMessage", calls, True)
    except Problem as problem:
        return str(problem)
    return None


# -- answers --------------------------------------------------------------------------------------------


def _frames(vendor: KiroVendor, body: dict[str, Any], fault: Fault) -> list[bytes]:
    current = body["conversationState"]["currentMessage"]["userInputMessage"]
    context = current.get("userInputMessageContext") or {}
    tools, results = context.get("tools") or [], context.get("toolResults") or []
    frames: list[bytes] = []
    if tools and not results:
        name = tools[0]["toolSpecification"]["name"]
        ident = f"tooluse_{secrets.token_hex(6)}"
        frames.append(event("assistantResponseEvent", orjson.dumps({"content": "Let me check."})))
        raw = orjson.dumps({"query": current["content"][-40:]}).decode()
        for start in range(0, len(raw), vendor.json_chunk):
            piece = {"name": name, "toolUseId": ident, "input": raw[start : start + vendor.json_chunk]}
            frames.append(event("toolUseEvent", orjson.dumps(piece)))
        frames.append(event("toolUseEvent", orjson.dumps({"name": name, "toolUseId": ident, "stop": True})))
    else:
        said = results[0]["content"][0]["text"] if results else current["content"]
        words = f"You said: {said}".split(" ")
        step = vendor.words_per_event
        for start in range(0, len(words), step):
            text = " ".join(words[start : start + step]) + (" " if start + step < len(words) else "")
            frames.append(event("assistantResponseEvent", orjson.dumps({"content": text})))
    if fault.exception is not None:
        return [*frames[:1], exception(fault.exception, orjson.dumps({"message": "Fake failure"}))]
    frames.append(event("meteringEvent", orjson.dumps({"unit": "credit", "unitPlural": "credits", "usage": 0.02})))
    frames.append(event("contextUsageEvent", orjson.dumps({"contextUsagePercentage": 1.5})))
    return frames


async def _json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


async def _generate(request: web.Request) -> web.StreamResponse:
    vendor = request.app[KIRO_VENDOR]
    headers = {k.lower(): v for k, v in request.headers.items()}
    received = Received(request.path, headers, await _json(request))
    vendor.received.append(received)
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme != "Bearer" or not vendor.valid(token):
        return _kiro_error(403, "The bearer token included in the request is invalid.")
    if request.content_type == "application/x-amz-json-1.0":
        if headers.get("x-amz-target") != TARGET:
            received.problem = "x-amz-target: missing or unknown operation"
            return _kiro_error(400, "UnknownOperationException")
    elif request.content_type != "application/json" or request.path != "/generateAssistantResponse":
        received.problem = f"content-type: {request.content_type!r} is not accepted here"
        return _kiro_error(415, "Unsupported Media Type")
    received.problem = validate(received.body, vendor.profile_arn)
    if received.problem is not None:
        return _kiro_error(400, "Improperly formed request.")
    fault = vendor.faults.popleft() if vendor.faults else Fault()
    if fault.status is not None:
        body = fault.body or {"message": "Fake failure", "reason": None}
        return web.json_response(body, status=fault.status)
    response = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream",
                                           "x-amzn-RequestId": secrets.token_hex(16)})  # fmt: skip
    await response.prepare(request)
    for frame in _frames(vendor, received.body, fault):
        await response.write(frame)
    await response.write_eof()
    return response


def create_kiro_app(vendor: KiroVendor) -> web.Application:
    app = web.Application()
    app[KIRO_VENDOR] = vendor
    app.router.add_post("/refreshToken", _social_refresh)
    app.router.add_post("/token", _oidc_token)
    app.router.add_post("/generateAssistantResponse", _generate)
    app.router.add_post("/", _generate)
    return app


async def start_kiro(aiohttp_server: Callable[..., Awaitable[TestServer]], **options: Any) -> tuple[KiroVendor, str]:
    """Serves the fake on loopback; the URL stands for every Kiro host (chat, social refresh and OIDC)."""
    vendor = KiroVendor(**options)
    server = await aiohttp_server(create_kiro_app(vendor))
    return vendor, str(server.make_url("")).rstrip("/")
