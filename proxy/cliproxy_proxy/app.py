"""The aiohttp application: routes, client auth, error shaping, and the state shared by all requests."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from time import perf_counter
from typing import Any

import orjson
import yarl
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import model_lists
from .bodies import BodyRefused, decode
from .clients import CLIENT, Client, key_index
from .config import CONTROL_CHARACTERS
from .count import CountError, count_tokens
from .embeddings import EmbeddingsExchange
from .forward import OVERHEAD_HEADER, Exchange
from .loader import ConfigSource
from .metrics import UNRESOLVED
from .reload import Reloader
from .runtime import Route, Runtime, owners
from .state import Proxy
from .translate import ANTHROPIC, GEMINI, OPENAI_CHAT, OPENAI_COMPLETIONS, RESPONSES, codec_for_path
from .translate.canonical import Reasoning
from .translate.codec import Codec
from .translate.thinking import split_thinking_suffix
from .vendor_headers import forwarded

log = logging.getLogger("cliproxy.proxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route needs a client key but the few in ``PUBLIC_HANDLERS``.

    The rule is decided on the route the router matched, never on the path's spelling, so no variant of a
    path (case, slashes, percent-encoding, dot segments) reaches a handler the rule did not judge.
    """
    proxy = request.app[PROXY]
    if _is_public(request, proxy):
        return await handler(request)
    runtime = proxy.runtime
    codec = _error_format(request)
    if not runtime.client_keys:
        if runtime.config.allow_unauthenticated:
            return await handler(request)
        if _is_loopback(request.remote) and not _from_browser_elsewhere(request):
            return await handler(request)
        return _error(
            codec, 403, "No api-keys are configured, so only loopback clients are served; "
            "configure api-keys or set allow-unauthenticated: true.", "unauthenticated_remote",
        )  # fmt: skip
    presented = _presented_key(request)
    if not presented:
        return _error(codec, 401, "Missing API key.", "missing_api_key")
    index = key_index(presented.encode(), runtime.client_keys)
    if index < 0:
        return _error(codec, 401, "Invalid API key.", "invalid_api_key")
    client = runtime.clients[index] if index < len(runtime.clients) else None
    if client is not None:
        if client.expired(time.time()):
            return _error(codec, 401, "This API key has expired.", "expired_api_key")
        request[CLIENT] = client
    return await handler(request)


def _error_format(request: web.Request) -> Codec:
    """The format of an error a request gets before its handler runs: its endpoint's, but on the model listings,
    which every SDK calls at the same path, the format of the SDK asking (Anthropic's 401 for Anthropic's client)."""
    if request.match_info.route.handler in (list_models, get_model):
        return _models_format(request)
    return codec_for_path(request.path)


def _is_public(request: web.Request, proxy: Proxy) -> bool:
    handler = request.match_info.route.handler
    return handler in PUBLIC_HANDLERS or (handler is prometheus and not proxy.metrics_port)


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


def _from_browser_elsewhere(request: web.Request) -> bool:
    """A request a web page made (cross-site, or by DNS rebinding under a foreign name) rather than a local client.

    A page in the user's browser can reach loopback ports; its requests carry an Origin or Sec-Fetch-Site
    header, and after DNS rebinding a Host that is not a loopback name.
    """
    host = (request.host or "").lower()
    name = host.rpartition(":")[0] if host.rpartition(":")[2].isdigit() else host
    if name not in _LOOPBACK_NAMES:
        return True
    if request.headers.get("Sec-Fetch-Site", "none") not in ("none", "same-origin"):
        return True
    origin = request.headers.get("Origin")
    return origin is not None and yarl.URL(origin).host not in _LOOPBACK_NAMES


def _error(codec: Codec, status: int, message: str, code: str | None) -> web.Response:
    """An error in the format of the API the client called."""
    return web.Response(status=status, body=codec.encode_error(status, message, code), content_type="application/json")


# -- handlers -------------------------------------------------------------------------------------------


def _models_format(request: web.Request) -> Codec:
    """Whose shape a model listing takes: each SDK lists models at the same path and reads its own vendor's."""
    if (
        request.path.startswith("/v1beta/")
        or "X-Goog-Api-Key" in request.headers
        or "X-Goog-Api-Client" in (request.headers)
    ):
        return GEMINI
    return ANTHROPIC if "anthropic-version" in request.headers else OPENAI_CHAT


async def list_models(request: web.Request) -> web.Response:
    runtime = request.app[PROXY].runtime
    shape = _models_format(request)
    client = request.get(CLIENT)
    routes = runtime.routes
    if client is not None and not client.unrestricted:
        routes = {model: route for model, route in routes.items() if client.allows(model)}
    else:  # everyone sees every model: the bodies built with the snapshot
        body = runtime.model_lists.get(shape.name)
        if body is not None:
            return web.Response(body=body, content_type="application/json")
    body = model_lists.listed(shape.name, owners(routes), runtime.loaded_at)
    return web.Response(body=body, content_type="application/json")


async def get_model(request: web.Request) -> web.Response:
    runtime = request.app[PROXY].runtime
    shape = _models_format(request)
    model = request.match_info["model"].removeprefix("models/")  # google-genai may send the full resource name
    route = runtime.routes.get(model) if _in_scope(request, model, runtime) else None
    if route is None:
        return _model_not_found(runtime, model, shape)
    body: dict[str, Any]
    if shape is GEMINI:
        body = model_lists.gemini_model(model, route.owner)
    elif shape is ANTHROPIC:
        body = model_lists.anthropic_model(model, runtime.loaded_at)
    else:
        body = model_lists.openai_model(model, route.owner, runtime.loaded_at)
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _model_not_found(runtime: Runtime, model: str, codec: Codec) -> web.Response:
    hint = runtime.hints.get(model)
    message = f"The model '{model}' does not exist or is not served by this proxy; GET /v1/models lists them."
    if hint:
        message = f"The model '{model}' needs a provider prefix (force-model-prefix): use {', '.join(hint)}."
    return _error(codec, 404, message, "model_not_found")


def _forwarder(inbound: Codec, kind: type[Exchange] = Exchange) -> Handler:
    async def forward(request: web.Request) -> web.StreamResponse:
        started = perf_counter()
        proxy = request.app[PROXY]
        runtime = proxy.runtime  # read once: this request keeps this snapshot whatever reloads meanwhile
        client = request.get(CLIENT)
        # asked now, answered while the body is read and routed; awaited before the first upstream attempt
        admission = proxy.limits.admission(client)
        span = proxy.accounting.server_span(kind.operation, request)
        try:
            exchange = await _exchange(request, proxy, runtime, inbound, started, kind)
        except BaseException:  # an HTTP error raised, or the client gone
            proxy.limits.forgo_soon(client, admission)
            raise
        if isinstance(exchange, Exchange):
            if admission is not None:
                exchange.admit(admission)
            exchange.span = span
            return await _run_for(request, proxy, client, exchange)
        await proxy.limits.forgo(client, admission)
        proxy.accounting.record(request, client, exchange.status, started, span=span)
        proxy.metrics.finish(UNRESOLVED, UNRESOLVED, exchange.status, perf_counter() - started)
        return exchange

    return forward


async def _run_for(request: web.Request, proxy: Proxy, client: Client | None, exchange: Exchange) -> web.StreamResponse:
    """A routed exchange; its tokens and cost settle its client's limits and count as its usage afterwards."""
    status = 499  # the client left before an answer
    try:
        response = await exchange.run()
        status = response.status
    finally:
        proxy.limits.forgo_soon(client, exchange.admission)  # still held: no upstream attempt was made
        proxy.accounting.record(request, client, status, exchange.started, exchange=exchange,
                                verdict=exchange.verdict, span=exchange.span)  # fmt: skip
    if exchange.verdict is not None and exchange.verdict.ticket:  # its max-parallel slot given back in Redis
        await proxy.limits.flush()  # before the answer goes: the client's next request may need it
    return response


def _in_scope(request: web.Request, model: str, runtime: Runtime) -> bool:
    """Whether the caller's key may use the model ``model`` routes to: itself, or without its ``(level)`` suffix."""
    client = request.get(CLIENT)
    if client is None or client.allows(model):
        return True
    return model not in runtime.routes and client.allows(split_thinking_suffix(model)[0])


def _out_of_scope(request: web.Request, model: str, runtime: Runtime, inbound: Codec) -> web.Response | None:
    if _in_scope(request, model, runtime):
        return None
    return _error(inbound, 403, f"This API key may not use the model '{model}'.", "model_not_allowed")


def _model_and_stream(request: web.Request, inbound: Codec, payload: dict[str, Any]) -> tuple[Any, bool]:
    """Gemini names the model and streaming in the URL; the other formats in the body."""
    if inbound is GEMINI:
        model, _, action = request.match_info["tail"].rpartition(":")
        if action not in ("generateContent", "streamGenerateContent"):
            raise web.HTTPNotFound()
        return model, action == "streamGenerateContent"
    return payload.get("model"), payload.get("stream") is True


async def _read_body(request: web.Request, runtime: Runtime, inbound: Codec) -> bytes | bytearray | web.Response:
    """The body, decoded from its Content-Encoding, within the live size limit and the client's body time.

    Chunks go straight into one buffer of the announced size, kept as read (aiohttp's ``read()`` would grow one
    and copy it once more). A slow body gets the 408 that closes it; an encoding that lies the 400, one the proxy
    does not decode the 415 (bodies.py: the limit holds for the decoded size too).
    """
    limit = runtime.config.max_body_bytes  # the app's client_max_size holds the limit at start; this one is live
    announced = request.content_length or 0
    if announced > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=announced)
    body = bytearray(announced)
    try:
        if request.content.is_eof():  # all of it came with the head (most requests): nothing to wait for
            size = await _fill(request, body, limit)
        else:
            async with asyncio.timeout(runtime.config.client_timeouts.body):
                size = await _fill(request, body, limit)
    except TimeoutError:
        response = _error(inbound, 408, "The request body did not arrive in time.", "request_timeout")
        response.force_close()  # whatever the client still sends is not read
        return response
    del body[size:]
    try:
        return decode(body, request.headers.get("Content-Encoding", ""), limit)
    except BodyRefused as refused:
        return _error(inbound, refused.status, refused.message, refused.code)


async def _fill(request: web.Request, body: bytearray, limit: int) -> int:
    """Read the body into ``body`` (in place while within the announced size); the size read."""
    size = 0
    async for chunk in request.content.iter_any():
        if size + len(chunk) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size + len(chunk))
        body[size : size + len(chunk)] = chunk
        size += len(chunk)
    return size


async def _json_body(
    request: web.Request, runtime: Runtime, inbound: Codec
) -> tuple[dict[str, Any], bytes | bytearray] | web.Response:
    """The body as a JSON object (and its decoded bytes), or the client's 4xx."""
    raw = await _read_body(request, runtime, inbound)
    if isinstance(raw, web.Response):
        return raw
    try:
        payload = orjson.loads(raw)  # refuses invalid UTF-8, NaN, and nesting deeper than 1024
    except orjson.JSONDecodeError:
        return _error(inbound, 400, "The request body is not valid JSON.", "invalid_json")
    if not isinstance(payload, dict):
        return _error(inbound, 400, "The request body must be a JSON object.", "invalid_json")
    return payload, raw


async def _exchange(
    request: web.Request, proxy: Proxy, runtime: Runtime, inbound: Codec, started: float, kind: type[Exchange]
) -> Exchange | web.Response:
    """The routed exchange for a request, or the error that stops it before any upstream is chosen."""
    read = await _json_body(request, runtime, inbound)
    if isinstance(read, web.Response):
        return read
    payload, raw = read
    named, stream = _model_and_stream(request, inbound, payload)
    routed = _route(request, runtime, inbound, named)
    if isinstance(routed, web.Response):
        return routed
    route, reasoning = routed
    return kind(proxy, request, runtime, route, inbound, payload, raw, started, stream=stream, reasoning=reasoning)


def _route(
    request: web.Request, runtime: Runtime, inbound: Codec, named: Any
) -> tuple[Route, Reasoning | None] | web.Response:
    """The route serving the model a client named (and the thinking suffix it carried), or the client's 4xx."""
    model = _checked_model(named, inbound)
    if isinstance(model, web.Response):
        return model
    refused = _out_of_scope(request, model, runtime, inbound)
    if refused is not None:
        return refused
    route, reasoning = runtime.routes.get(model), None
    if route is None:
        base, reasoning = split_thinking_suffix(model)
        route = runtime.routes.get(base) if reasoning is not None else None
    if route is None:
        return _model_not_found(runtime, model, inbound)
    return route, reasoning


def _checked_model(model: Any, inbound: Codec) -> str | web.Response:
    """The model name, or the 400 for one no route could hold: missing, not a string, with CR/LF or other controls."""
    if not isinstance(model, str) or not model:
        return _error(inbound, 400, "The request needs a 'model' string.", "missing_model")
    if CONTROL_CHARACTERS.search(model):
        return _error(inbound, 400, "The model name must not contain control characters.", "invalid_model")
    return model


def _counter(inbound: Codec) -> Handler:
    """Token counting: judged by the key's scope and expiry like any request, but outside its rpm, tpm, parallel and
    budget limits (it generates nothing and the providers count for free; agents count before many requests, and a
    429 on a count would stall them), and counted apart in the client's usage."""
    counted = _count_handler(inbound)

    async def count(request: web.Request) -> web.StreamResponse:
        response = await counted(request)
        client = request.get(CLIENT)
        if client is not None:
            request.app[PROXY].client_usage.record_count(client, response.status)
        return response

    return count


def _count_handler(inbound: Codec) -> Handler:
    async def count(request: web.Request) -> web.StreamResponse:
        proxy = request.app[PROXY]
        runtime = proxy.runtime
        read = await _json_body(request, runtime, inbound)
        if isinstance(read, web.Response):
            return read
        payload, raw = read
        named = request.match_info["tail"].rpartition(":")[0] if inbound is GEMINI else payload.get("model")
        routed = _route(request, runtime, inbound, named)
        if isinstance(routed, web.Response):
            return routed
        route = routed[0]
        timeouts = route.policy
        try:
            vendor = forwarded(request.headers, inbound.vendor_headers)
            tokens = await count_tokens(
                proxy.pool, proxy.health, route, inbound, payload, raw, timeouts.connect, timeouts.read, vendor
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


async def client_metrics(request: web.Request) -> web.Response:
    """Per-client usage and spend. A plain ``api-keys`` key sees every client; a named one only itself."""
    proxy = request.app[PROXY]
    caller = request.get(CLIENT)
    clients = list(proxy.runtime.clients)
    if caller is not None and not caller.plain:
        clients = [client for client in clients if client.name == caller.name]
    return web.Response(body=orjson.dumps(await proxy.accounting.report(clients)), content_type="application/json")


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
    """Past the client key (auth_middleware): only a local client, never a web page, may force a reload."""
    if not _is_loopback(request.remote) or _from_browser_elsewhere(request):
        return _error(OPENAI_CHAT, 403, "Reload is only accepted from a loopback client, not a browser.", "forbidden")
    reloader = request.app.get(RELOADER)
    if reloader is None:
        return _error(OPENAI_CHAT, 409, "This proxy was not started from a config source.", "no_config_source")
    changed = await asyncio.shield(reloader.check(force=True))  # a caller that hangs up does not cut it short
    status = 200 if changed else 422
    return web.json_response({"reloaded": changed, "generation": request.app[PROXY].generation,
                              "error": reloader.last_error or None}, status=status)  # fmt: skip


async def index(request: web.Request) -> web.Response:
    return web.json_response({"message": "cliproxy", "endpoints": sorted(
        {r.resource.canonical for r in request.app.router.routes() if r.resource is not None}
    )})  # fmt: skip


#: The routes served without a client key: the kubelet's probes, and Prometheus' scrape unless it has its own port.
PUBLIC_HANDLERS = frozenset({healthz, readyz})


# -- assembly -------------------------------------------------------------------------------------------


def create_app(
    runtime: Runtime,
    source: ConfigSource | None = None,
    *,
    reload_interval: float = 1.0,
    configured: bool = True,
    metrics_port: int | None = None,
    host: str | None = None,
) -> web.Application:
    """An application serving ``runtime``; with a ``source`` it also watches and reloads it.

    ``configured=False`` serves ``runtime`` (empty) as not ready until the source yields a first config.
    ``metrics_port`` (else the config's ``metrics-port``) serves ``/metrics`` on its own listener on ``host``.
    """
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=runtime.config.max_body_bytes,
        handler_args={"auto_decompress": False},  # bodies are decoded in bodies.py, where errors keep their format
    )  # fmt: skip
    proxy = Proxy(runtime, configured=configured)
    proxy.metrics_port = metrics_port or proxy.metrics_port
    proxy.metrics_host = host
    app[PROXY] = proxy
    if source is not None:
        app[RELOADER] = Reloader(proxy, source, reload_interval)
    for path in ("/v1/chat/completions", "/chat/completions"):
        app.router.add_post(path, _forwarder(OPENAI_CHAT))
    app.router.add_post("/v1/completions", _forwarder(OPENAI_COMPLETIONS))
    app.router.add_post("/v1/messages", _forwarder(ANTHROPIC))
    app.router.add_post("/v1/responses", _forwarder(RESPONSES))
    app.router.add_post("/v1/embeddings", _forwarder(OPENAI_CHAT, EmbeddingsExchange))
    # google-genai speaks v1 by default; [\s\S]: a model name with a line break is judged (400), not unrouted
    for path in ("/v1beta/models/{tail:[\\s\\S]+}", "/v1/models/{tail:[\\s\\S]+}"):
        app.router.add_post(path, gemini)
    for path in ("/v1/models", "/v1beta/models"):
        app.router.add_get(path, list_models)
        app.router.add_get(path + "/{model:.+}", get_model)
    app.router.add_post("/v1/messages/count_tokens", _counter(ANTHROPIC))
    app.router.add_get("/v1/metrics/providers", provider_metrics)
    app.router.add_get("/v1/metrics/clients", client_metrics)
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
    metrics = await _metrics_listener(proxy) if proxy.metrics_port else None
    proxy.limits.start()
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
    if metrics is not None:
        await metrics.cleanup()
    await proxy.close()


async def _metrics_listener(proxy: Proxy) -> web.AppRunner:
    """``/metrics`` alone on its own port: scraped without a client key, where a NetworkPolicy can fence it."""
    app = web.Application()
    app[PROXY] = proxy
    app.router.add_get("/metrics", prometheus)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, proxy.metrics_host, proxy.metrics_port).start()
    return runner


async def _drain(app: web.Application) -> None:
    app[PROXY].draining = True
