"""The aiohttp application: routes, client auth, error shaping, and the state shared by all requests."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from time import perf_counter
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .bodies import BodyRefused, decode
from .count import CountError, count_tokens
from .discovery import Discovery
from .forward import OVERHEAD_HEADER, Exchange
from .health import Health
from .loader import ConfigSource
from .metrics import UNRESOLVED, Metrics, SessionRow
from .reload import Reloader
from .runtime import Runtime
from .translate import ANTHROPIC, GEMINI, OPENAI_CHAT, OPENAI_COMPLETIONS, RESPONSES, codec_for_path
from .translate.canonical import Codec
from .translate.thinking import split_thinking_suffix
from .upstream import Pool

log = logging.getLogger("cliproxy.proxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_OPEN_PATHS = frozenset({"/v1/metrics/providers"})


class Proxy:
    """Everything requests share: the live snapshot, credential health, metrics and the upstream pool."""

    def __init__(self, runtime: Runtime, *, configured: bool = True) -> None:
        self.runtime = runtime
        self.configured = configured  # False: started empty, waiting for a first config from the Kubernetes API
        self.generation = 1
        self.health = Health()
        self.metrics = Metrics()
        self.discovery = Discovery(self.metrics.discovered)
        self.draining = False
        self.pool = Pool()
        self.health.sync(runtime.credentials)
        self.metrics.watch_credentials(
            self.credential_states, self.session_states, lambda: self.discovery.failing(self.runtime.credentials)
        )
        self._mark_loaded()

    async def close(self) -> None:
        await self.runtime.sessions.retire(set())
        self.runtime.sessions.pool.close()
        self.pool.close()

    def apply(self, runtime: Runtime) -> None:
        """Make a new snapshot live: one assignment; requests in flight keep the one they started with."""
        self.health.sync(runtime.credentials)
        self.runtime = runtime
        self.configured = True
        self.generation += 1
        self._mark_loaded()

    def _mark_loaded(self) -> None:
        self.metrics.reloads.labels("success").inc()
        self.metrics.generation.set(self.generation)
        self.metrics.last_reload.set(self.runtime.loaded_at)

    def session_states(self) -> list[SessionRow]:
        return [
            (c.provider, c.label, c.session.state, c.session.expires_at, c.session.refresh_count)
            for c in self.runtime.credentials
            if c.session is not None
        ]

    def credential_states(self) -> dict[str, tuple[int, int]]:
        states: dict[str, tuple[int, int]] = {}
        for credential in self.runtime.credentials:
            healthy, cooling = states.get(credential.provider, (0, 0))
            if self.health.cooling(credential):
                cooling += 1
            else:
                healthy += 1
            states[credential.provider] = (healthy, cooling)
        return states


PROXY = web.AppKey("proxy", Proxy)
RELOADER = web.AppKey("reloader", Reloader)


# -- middlewares ----------------------------------------------------------------------------------------


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves in OpenAI's JSON shape; nothing unexpected leaks a traceback to the client.

    Responses the proxy answers itself carry their whole handling time as the overhead header.
    """
    started = perf_counter()
    try:
        response = await handler(request)
        if not response.prepared and OVERHEAD_HEADER not in response.headers:
            response.headers[OVERHEAD_HEADER] = f"{(perf_counter() - started) * 1000:.3f}"
        return response
    except web.HTTPException as http:
        if http.status < 400:
            raise
        messages = {
            404: f"Unknown path {request.path}.",
            405: f"Method {request.method} is not allowed on {request.path}.",
            413: "The request body is larger than the proxy accepts (max-body-bytes).",
        }
        message = messages.get(http.status, http.reason)
        code = {404: "unknown_path", 405: "method_not_allowed", 413: "request_too_large"}.get(http.status)
        return _error(codec_for_path(request.path), http.status, message, code)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(codec_for_path(request.path), 500, "The proxy failed to handle this request.", "internal_error")


def _presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value else header.strip()
    for name in ("X-Api-Key", "X-Goog-Api-Key"):
        if name in request.headers:
            return request.headers[name].strip()
    query = request.rel_url.query
    return query.get("key") or query.get("auth_token")


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def key_matches(presented: bytes, keys: tuple[bytes, ...]) -> bool:
    """Constant-time over every configured key: neither the match nor its position shows in timing."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return matched


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if not path.startswith(("/v1/", "/v1beta/")) or path in _OPEN_PATHS:
        return await handler(request)
    runtime = request.app[PROXY].runtime
    codec = codec_for_path(path)
    if not runtime.client_keys:
        if runtime.config.allow_unauthenticated or _is_loopback(request.remote):
            return await handler(request)
        return _error(
            codec, 403, "No api-keys are configured, so only loopback clients are served; "
            "configure api-keys or set allow-unauthenticated: true.", "unauthenticated_remote",
        )  # fmt: skip
    presented = _presented_key(request)
    if not presented:
        return _error(codec, 401, "Missing API key.", "missing_api_key")
    if not key_matches(presented.encode(), runtime.client_keys):
        return _error(codec, 401, "Invalid API key.", "invalid_api_key")
    return await handler(request)


def _error(codec: Codec, status: int, message: str, code: str | None) -> web.Response:
    """An error in the format of the API the client called."""
    return web.Response(status=status, body=codec.encode_error(status, message, code), content_type="application/json")


# -- handlers -------------------------------------------------------------------------------------------


async def list_models(request: web.Request) -> web.Response:
    runtime = request.app[PROXY].runtime
    anthropic = "anthropic-version" in request.headers  # Anthropic's SDK lists models in its own shape
    body = runtime.anthropic_models_body if anthropic else runtime.models_body
    return web.Response(body=body, content_type="application/json")


async def get_model(request: web.Request) -> web.Response:
    runtime = request.app[PROXY].runtime
    model = request.match_info["model"]
    route = runtime.routes.get(model)
    if route is None:
        return _model_not_found(runtime, model, OPENAI_CHAT)
    owner = route.groups[0][0].credential.provider
    body = {"id": model, "object": "model", "created": int(runtime.loaded_at), "owned_by": owner}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _model_not_found(runtime: Runtime, model: str, codec: Codec) -> web.Response:
    hint = runtime.hints.get(model)
    message = f"The model '{model}' does not exist or is not served by this proxy; GET /v1/models lists them."
    if hint:
        message = f"The model '{model}' needs a provider prefix (force-model-prefix): use {', '.join(hint)}."
    return _error(codec, 404, message, "model_not_found")


def _forwarder(inbound: Codec) -> Handler:
    async def forward(request: web.Request) -> web.StreamResponse:
        started = perf_counter()
        proxy = request.app[PROXY]
        runtime = proxy.runtime  # read once: this request keeps this snapshot whatever reloads meanwhile
        exchange = await _exchange(request, proxy, runtime, inbound, started)
        if isinstance(exchange, Exchange):
            return await exchange.run()
        proxy.metrics.finish(UNRESOLVED, UNRESOLVED, exchange.status, perf_counter() - started)
        return exchange

    return forward


def _model_and_stream(request: web.Request, inbound: Codec, payload: dict[str, Any]) -> tuple[Any, bool]:
    """Gemini names the model and streaming in the URL; the other formats in the body."""
    if inbound is GEMINI:
        model, _, action = request.match_info["tail"].rpartition(":")
        if action not in ("generateContent", "streamGenerateContent"):
            raise web.HTTPNotFound()
        return model, action == "streamGenerateContent"
    return payload.get("model"), payload.get("stream") is True


async def _json_body(
    request: web.Request, runtime: Runtime, inbound: Codec
) -> tuple[dict[str, Any], bytes] | web.Response:
    """The body as a JSON object (and its bytes, decoded from any Content-Encoding), or the client's 4xx."""
    limit = runtime.config.max_body_bytes  # the app's client_max_size holds the limit at start; this one is live
    if (request.content_length or 0) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length or 0)
    raw = await request.read()
    try:
        raw = decode(raw, request.headers.get("Content-Encoding", ""), limit)
    except BodyRefused as refused:
        return _error(inbound, refused.status, refused.message, refused.code)
    if len(raw) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(raw))
    try:
        payload = orjson.loads(raw)  # refuses invalid UTF-8, NaN, and nesting deeper than 1024
    except orjson.JSONDecodeError:
        return _error(inbound, 400, "The request body is not valid JSON.", "invalid_json")
    if not isinstance(payload, dict):
        return _error(inbound, 400, "The request body must be a JSON object.", "invalid_json")
    return payload, raw


async def _exchange(
    request: web.Request, proxy: Proxy, runtime: Runtime, inbound: Codec, started: float
) -> Exchange | web.Response:
    """The routed exchange for a request, or the error that stops it before any upstream is chosen."""
    read = await _json_body(request, runtime, inbound)
    if isinstance(read, web.Response):
        return read
    payload, raw = read
    model, stream = _model_and_stream(request, inbound, payload)
    if not isinstance(model, str) or not model:
        return _error(inbound, 400, "The request needs a 'model' string.", "missing_model")
    route, reasoning = runtime.routes.get(model), None
    if route is None:
        base, reasoning = split_thinking_suffix(model)
        route = runtime.routes.get(base) if reasoning is not None else None
    if route is None:
        return _model_not_found(runtime, model, inbound)
    return Exchange(proxy, request, runtime, route, inbound, payload, raw, started, stream=stream, reasoning=reasoning)


def _counter(inbound: Codec) -> Handler:
    async def count(request: web.Request) -> web.StreamResponse:
        proxy = request.app[PROXY]
        runtime = proxy.runtime
        read = await _json_body(request, runtime, inbound)
        if isinstance(read, web.Response):
            return read
        payload, raw = read
        model = request.match_info["tail"].rpartition(":")[0] if inbound is GEMINI else payload.get("model")
        if not isinstance(model, str) or not model:
            return _error(inbound, 400, "The request needs a 'model' string.", "missing_model")
        route = runtime.routes.get(model) or runtime.routes.get(split_thinking_suffix(model)[0])
        if route is None:
            return _model_not_found(runtime, model, inbound)
        timeouts = runtime.config.timeouts
        try:
            tokens = await count_tokens(
                proxy.pool, proxy.health, route, inbound, payload, raw, timeouts.connect, timeouts.read
            )
        except CountError as error:
            return _error(inbound, error.status, error.message, error.code)
        body = {"totalTokens": tokens} if inbound is GEMINI else {"input_tokens": tokens}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    return count


_gemini_generate = _forwarder(GEMINI)
_gemini_count = _counter(GEMINI)


async def gemini(request: web.Request) -> web.StreamResponse:
    """Gemini puts the action after the model: ``{model}:generateContent``, ``:countTokens``..."""
    if request.match_info["tail"].endswith(":countTokens"):
        return await _gemini_count(request)
    return await _gemini_generate(request)


async def provider_metrics(request: web.Request) -> web.Response:
    """cliproxyapi++'s provider map, with the latencies it declares but never fills, plus live state."""
    proxy = request.app[PROXY]
    states = proxy.credential_states()
    body: dict[str, Any] = {}
    for provider in sorted({*states, *proxy.metrics.providers} - {UNRESOLVED}):
        healthy, cooling = states.get(provider, (0, 0))
        body[provider] = {
            **proxy.metrics.summary(provider),
            "credentials_healthy": healthy,
            "credentials_cooling": cooling,
        }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def prometheus(request: web.Request) -> web.Response:
    output = generate_latest(request.app[PROXY].metrics.registry)
    return web.Response(body=output, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    if proxy.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not proxy.configured:
        reloader = request.app.get(RELOADER)
        error = reloader.last_error if reloader is not None else ""
        return web.json_response({"status": "waiting for config", "error": error or None}, status=503)
    return web.json_response({"status": "ready", "generation": proxy.generation, "models": len(proxy.runtime.routes)})


async def reload_now(request: web.Request) -> web.Response:
    if not _is_loopback(request.remote):
        return _error(OPENAI_CHAT, 403, "Reload is only accepted from loopback.", "forbidden")
    reloader = request.app.get(RELOADER)
    if reloader is None:
        return _error(OPENAI_CHAT, 409, "This proxy was not started from a config source.", "no_config_source")
    changed = await reloader.check(force=True)
    status = 200 if changed else 422
    return web.json_response({"reloaded": changed, "generation": request.app[PROXY].generation,
                              "error": reloader.last_error or None}, status=status)  # fmt: skip


async def index(request: web.Request) -> web.Response:
    return web.json_response({"message": "cliproxy", "endpoints": sorted(
        {r.resource.canonical for r in request.app.router.routes() if r.resource is not None}
    )})  # fmt: skip


# -- assembly -------------------------------------------------------------------------------------------


def create_app(
    runtime: Runtime, source: ConfigSource | None = None, *, reload_interval: float = 1.0, configured: bool = True
) -> web.Application:
    """An application serving ``runtime``; with a ``source`` it also watches and reloads it.

    ``configured=False`` serves ``runtime`` (empty) as not ready until the source yields a first config.
    """
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=runtime.config.max_body_bytes,
        handler_args={"auto_decompress": False},  # bodies are decoded in bodies.py, where errors keep their format
    )  # fmt: skip
    proxy = Proxy(runtime, configured=configured)
    app[PROXY] = proxy
    if source is not None:
        app[RELOADER] = Reloader(proxy, source, reload_interval)
    for path in ("/v1/chat/completions", "/chat/completions"):
        app.router.add_post(path, _forwarder(OPENAI_CHAT))
    app.router.add_post("/v1/completions", _forwarder(OPENAI_COMPLETIONS))
    app.router.add_post("/v1/messages", _forwarder(ANTHROPIC))
    app.router.add_post("/v1/responses", _forwarder(RESPONSES))
    for path in ("/v1beta/models/{tail:.+}", "/v1/models/{tail:.+}"):  # google-genai speaks v1 by default
        app.router.add_post(path, gemini)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_post("/v1/messages/count_tokens", _counter(ANTHROPIC))
    app.router.add_get("/v1/metrics/providers", provider_metrics)
    app.router.add_get("/metrics", prometheus)
    for path in ("/healthz", "/health"):
        app.router.add_get(path, healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/-/reload", reload_now)
    app.router.add_get("/", index)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_drain)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    proxy = app[PROXY]
    reloader = app.get(RELOADER)
    if reloader is not None:
        await reloader.source.start(reloader.wake.set)
        discovers = any(c.discovers_models for c in proxy.runtime.credentials)
        if discovers or reloader.source.using_api:
            await reloader.check(force=discovers)  # the API's objects, and the upstreams' model lists, before serving
    watcher = asyncio.create_task(reloader.watch()) if reloader is not None else None
    loop = asyncio.get_running_loop()
    if reloader is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reloader.check(force=True)))
    yield
    if watcher is not None:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if reloader is not None:
        await reloader.source.stop()
    await proxy.close()


async def _drain(app: web.Application) -> None:
    app[PROXY].draining = True
