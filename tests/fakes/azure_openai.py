"""A fake Azure OpenAI resource and a fake Microsoft Entra token endpoint.

The resource serves both of Azure's URL shapes: deployment URLs
(``/openai/deployments/{deployment}/chat/completions?api-version=YYYY-MM-DD``; the model is the deployment, any
``model`` in the body is ignored) and the v1 API (``/openai/v1/chat/completions``, ``model`` names a deployment,
no api-version needed). It refuses what Azure refuses: a missing or malformed api-version on deployment URLs,
a request without an ``api-key`` header or an Entra bearer token this fake issued and that has not expired, an
unknown deployment, and a body that does not fit the ``openai`` SDK's own request types (the documented schema).
Errors are Azure's shape, ``{"error": {"code", "message"}}``. Streams open with Azure's prompt-filter chunk
(no choices), as the live service does.

The token endpoint speaks Entra's v2 client-credentials grant (``/{tenant}/oauth2/v2.0/token``), with a client
secret or a federated client assertion (AKS Workload Identity), for the Cognitive Services scope.
"""

from __future__ import annotations

import contextlib
import functools
import re
import secrets
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pydantic
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai.types import embedding_create_params
from openai.types.chat import completion_create_params

API_KEY = "azure-key-1"
API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
SCOPE = "https://cognitiveservices.azure.com/.default"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_FILTERS = {name: {"filtered": False, "severity": "safe"} for name in ("hate", "self_harm", "sexual", "violence")}


@dataclass
class Entra:
    """The token endpoint's state: the one application it knows and the tokens it issued."""

    tenant: str = "0b4c1f5e-1111-2222-3333-444455556666"
    client_id: str = "5f2e7a10-aaaa-bbbb-cccc-ddddeeeeffff"
    client_secret: str = "entra-secret-value"
    federated_token: str = "eyJ.k8s-service-account-token.sig"  # what AKS projects into the pod
    lifetime: float = 3600.0
    issued: dict[str, float] = field(default_factory=dict)
    grants: list[str] = field(default_factory=list)  # "secret" or "assertion", per token issued
    url: str = ""  # the authority (scheme and host), once served

    def valid(self, token: str) -> bool:
        expires = self.issued.get(token)
        return expires is not None and time.time() < expires


ENTRA = web.AppKey("entra", Entra)


async def _token(request: web.Request) -> web.Response:
    state = request.app[ENTRA]
    form = await request.post()

    def refuse(code: str, description: str, status: int = 400) -> web.Response:
        return web.json_response({"error": code, "error_description": description}, status=status)

    if request.match_info["tenant"] != state.tenant:
        return refuse("invalid_tenant", "AADSTS90002: Tenant not found.")
    if form.get("grant_type") != "client_credentials" or form.get("client_id") != state.client_id:
        return refuse("unauthorized_client", "AADSTS700016: Application not found in the directory.")
    if form.get("scope") != SCOPE:
        return refuse("invalid_scope", "AADSTS70011: The provided value for scope is not valid.")
    if "client_secret" in form:
        if form["client_secret"] != state.client_secret:
            return refuse("invalid_client", "AADSTS7000215: Invalid client secret provided.", 401)
        state.grants.append("secret")
    elif form.get("client_assertion_type") == ASSERTION_TYPE:
        if form.get("client_assertion") != state.federated_token:
            return refuse("invalid_client", "AADSTS700211: No matching federated identity record found.", 401)
        state.grants.append("assertion")
    else:
        return refuse("invalid_request", "AADSTS900144: The request body must contain client_secret or "
                                         "client_assertion.")  # fmt: skip
    token = f"eyJ0eXAiOiJKV1Qi.{secrets.token_urlsafe(24)}"
    state.issued[token] = time.time() + state.lifetime
    life = int(state.lifetime)
    return web.json_response({"token_type": "Bearer", "expires_in": life, "ext_expires_in": life,
                              "access_token": token})  # fmt: skip


@functools.cache
def _authority() -> trustme.CA:
    return trustme.CA()


@contextlib.contextmanager
def trusted_tls(monkeypatch: pytest.MonkeyPatch) -> Iterator[ssl.SSLContext]:
    """A TLS context for loopback fakes whose CA the proxy trusts through ``SSL_CERT_FILE``, as a private CA is."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _authority().issue_cert("localhost").configure_cert(context)
    with _authority().cert_pem.tempfile() as path:
        monkeypatch.setenv("SSL_CERT_FILE", path)
        yield context


@contextlib.asynccontextmanager
async def serve_entra(ssl_context: ssl.SSLContext, **options: Any) -> AsyncIterator[Entra]:
    """Serve the token endpoint over TLS on loopback (azure-identity accepts only an https authority)."""
    state = Entra(**options)
    app = web.Application()
    app[ENTRA] = state
    app.router.add_post("/{tenant}/oauth2/v2.0/token", _token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    assert site._server is not None and site._server.sockets  # type: ignore[attr-defined]
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    state.url = f"https://localhost:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


# -- the resource ---------------------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: Any


@dataclass
class AzureOpenAI:
    """The resource's state: its deployments (name -> model), keys, the Entra that vouches for tokens."""

    deployments: dict[str, str] = field(
        default_factory=lambda: {"chat-prod": "gpt-4o", "embed": "text-embedding-3-small"}
    )
    keys: frozenset[str] = frozenset({API_KEY})
    entra: Entra | None = None
    received: list[Received] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why requests were refused

    @property
    def last(self) -> Received:
        return self.received[-1]


AZURE = web.AppKey("azure_openai", AzureOpenAI)


def azure_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


_FORBID = pydantic.ConfigDict(extra="forbid")


@functools.cache
def _schema(kind: str) -> pydantic.TypeAdapter[Any]:
    shapes = {
        "chat": completion_create_params.CompletionCreateParamsNonStreaming,
        "chat-stream": completion_create_params.CompletionCreateParamsStreaming,
        "embeddings": embedding_create_params.EmbeddingCreateParams,
    }
    return pydantic.TypeAdapter(list[shapes[kind]], config=_FORBID)  # type: ignore[valid-type]


def schema_problem(kind: str, body: dict[str, Any]) -> str | None:
    """The first way the body misses the SDK's request type, in the service's words, or None."""
    try:
        (checked,) = _schema(kind).validate_python([body])
        orjson.dumps(checked, default=list)  # pydantic checks Iterable fields lazily: walking them checks now
    except pydantic.ValidationError as error:
        first = max(error.errors(), key=lambda e: len(e["loc"]))
        where = ".".join(str(p) for p in first["loc"][1:] if not str(p).startswith(("function-", "typed-dict")))
        return f"Invalid value for '{where}': {first['msg']}"
    except TypeError as error:
        return f"Invalid request body: {error}"
    return None


def _authorised(request: web.Request, state: AzureOpenAI) -> str | None:
    """Why the caller is refused, or None: an ``api-key`` the resource has, or a live Entra token."""
    key = request.headers.get("api-key")
    bearer = request.headers.get("Authorization", "")
    if key is not None:
        return None if key in state.keys else "key"
    if bearer.startswith("Bearer ") and state.entra is not None:
        return None if state.entra.valid(bearer[7:]) else "token"
    return "missing"


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message["content"]
            if isinstance(content, str):
                return content
            texts = [p["text"] for p in content if p.get("type") == "text"]
            images = sum(1 for p in content if p.get("type") == "image_url")
            return " ".join(texts) + (f" [{images} image]" if images else "")
    return ""


def _call(body: dict[str, Any], text: str) -> dict[str, Any] | None:
    tools = body.get("tools") or []
    if not tools or any(m.get("role") == "tool" for m in body["messages"]):
        return None
    function = tools[0]["function"]
    properties = list((function.get("parameters") or {}).get("properties") or {"query": {}})
    arguments = orjson.dumps({properties[0]: text}).decode()
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": function["name"], "arguments": arguments}}  # fmt: skip


async def _chat(request: web.Request, state: AzureOpenAI, body: dict[str, Any], model: str) -> web.StreamResponse:
    stream = body.get("stream") is True
    problem = schema_problem("chat-stream" if stream else "chat", body)
    if problem is not None:
        state.refused.append(problem)
        return azure_error(400, "BadRequest", problem)
    text = _last_user_text(body["messages"])
    reply = f"echo: {text}"
    call = _call(body, text)
    prompt = len(orjson.dumps(body["messages"]).split())
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": len(reply.split()),
        "total_tokens": prompt + len(reply.split()),
    }
    ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    base = {"id": ident, "created": int(time.time()), "model": model, "system_fingerprint": "fp_azure"}
    message: dict[str, Any] = {"role": "assistant", "content": None if call else reply}
    if call:
        message["tool_calls"] = [call]
    finish = "tool_calls" if call else "stop"
    if not stream:
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None,
                  "content_filter_results": _FILTERS}  # fmt: skip
        document = {**base, "object": "chat.completion", "choices": [choice], "usage": usage,
                    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _FILTERS}]}  # fmt: skip
        return web.json_response(document, dumps=lambda v: orjson.dumps(v).decode())
    chunk = {**base, "object": "chat.completion.chunk"}

    def event(delta: dict[str, Any] | None, reason: str | None = None, usage_: Any = None) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}]
        return b"data: " + orjson.dumps({**chunk, "choices": choices, "usage": usage_}) + b"\n\n"

    # Azure opens every stream with the prompt's filter results: no choices, empty id and model.
    events = [b"data: " + orjson.dumps({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                                        "prompt_filter_results": [{"prompt_index": 0,
                                                                   "content_filter_results": _FILTERS}]}) + b"\n\n",
              event({"role": "assistant", "content": ""})]  # fmt: skip
    if call:
        head = {"index": 0, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"],
                                                                              "arguments": ""}}  # fmt: skip
        events.append(event({"tool_calls": [head]}))
        arguments = call["function"]["arguments"]
        for start in range(0, len(arguments), 7):
            events.append(
                event({"tool_calls": [{"index": 0, "function": {"arguments": arguments[start : start + 7]}}]})
            )
    else:
        words = reply.split(" ")
        events += [event({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
    events.append(event({}, finish))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        events.append(event(None, None, usage))
    events.append(b"data: [DONE]\n\n")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for data in events:
        await response.write(data)
    await response.write_eof()
    return response


def _embeddings(state: AzureOpenAI, body: dict[str, Any], model: str) -> web.Response:
    problem = schema_problem("embeddings", body)
    if problem is not None:
        state.refused.append(problem)
        return azure_error(400, "BadRequest", problem)
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    size = body.get("dimensions") or 1536
    data = [{"object": "embedding", "index": i, "embedding": [((len(str(item)) + k) % 11 - 5) / 5 for k in range(size)]}
            for i, item in enumerate(inputs)]  # fmt: skip
    tokens = sum(len(str(item).split()) for item in inputs)
    return web.json_response({"object": "list", "data": data, "model": model,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})  # fmt: skip


async def _serve(request: web.Request) -> web.StreamResponse:
    state = request.app[AZURE]
    deployment = request.match_info.get("deployment")
    operation = request.match_info["operation"]
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    headers = {k.lower(): v for k, v in request.headers.items()}
    state.received.append(Received(request.path, dict(request.query), headers, body))
    version = request.query.get("api-version")
    if deployment is not None:  # deployment URLs require an api-version
        if version is None:
            state.refused.append("api-version missing")
            return azure_error(404, "404", "Resource not found")
        if not API_VERSION.fullmatch(version):
            state.refused.append("api-version malformed")
            return azure_error(400, "BadRequest", "API version not supported")
    elif version not in (None, "preview", "latest"):
        state.refused.append("api-version on v1")
        return azure_error(400, "BadRequest", "API version not supported")
    refusal = _authorised(request, state)
    if refusal is not None:
        state.refused.append(f"auth: {refusal}")
        return azure_error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint. Make "
                           "sure to provide a valid key for an active subscription and use a correct regional API "
                           "endpoint for your resource.")  # fmt: skip
    if not isinstance(body, dict):
        return azure_error(400, "BadRequest", "The request body must be a JSON object.")
    name = deployment if deployment is not None else body.get("model")
    if not isinstance(name, str) or name not in state.deployments:
        state.refused.append(f"deployment {name!r}")
        message = (
            "The API deployment for this resource does not exist. If you created the deployment within the "
            "last 5 minutes, please wait a moment and try again."
        )
        return azure_error(404, "DeploymentNotFound", message)
    body = {**body, "model": name}  # deployment URLs ignore the body's model; the SDK types want one
    model = state.deployments[name]
    if operation == "chat/completions":
        return await _chat(request, state, body, model)
    return _embeddings(state, body, model)


def create_azure_app(state: AzureOpenAI) -> web.Application:
    app = web.Application()
    app[AZURE] = state
    operations = "{operation:chat/completions|embeddings}"
    app.router.add_post(f"/openai/deployments/{{deployment}}/{operations}", _serve)
    app.router.add_post(f"/openai/v1/{operations}", _serve)
    return app


async def start_azure(aiohttp_server: Callable[..., Awaitable[TestServer]], **options: Any) -> tuple[AzureOpenAI, str]:
    """Serve a fake resource on loopback: its state and its endpoint (what ``base-url`` takes)."""
    state = AzureOpenAI(**options)
    server = await aiohttp_server(create_azure_app(state))
    return state, str(server.make_url("")).rstrip("/")
