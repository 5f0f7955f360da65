"""One client request's way through credential selection, retries and the upstream call.

Bodies are passed through: the request is re-encoded only when the model id must change, responses are
rewritten by byte substitution, and streams go out event by event as they arrive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from time import perf_counter, time
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from aiohttp import ClientConnectionResetError, web

from .clients import CLIENT
from .health import REASONS, names_missing_model
from .hosted_tools import apply_policy, dropped_header
from .limits import ALLOWED, Verdict
from .metrics import UNRESOLVED
from .oauth.base import RefreshRejected, TokenError
from .relay import SSERelay
from .runtime import Credential, Route, Runtime, Target
from .scrub import Scrubber, TextScrubber, scrub, scrub_answer
from .state import Proxy
from .tracing import finish, provider_name
from .translate import OPENAI_CHAT, OPENAI_COMPLETIONS, for_upstream, passes_through
from .translate.canonical import (
    Reasoning,
    Request,
    StreamError,
    ToolCall,
    TranslationError,
    UpstreamFailed,
    Usage,
    reencode,
    restore_namespace,
)
from .translate.codec import Codec, ErrorKind, status_kind
from .translate.relay import TranslatingRelay
from .upstream import Response, UpstreamError, UpstreamTimeout
from .vendor_headers import forwarded, passed_back

if TYPE_CHECKING:
    from opentelemetry.trace import Span

T = TypeVar("T")

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}
OVERHEAD_HEADER = "X-Cliproxy-Overhead-Ms"
#: Set when the answer comes from a fallback model: names the model the client asked for, which failed.
FALLBACK_HEADER = "X-Cliproxy-Fallback-From"
#: Event loop timers may fire a millisecond early (uvloop rounds to ms): never wake before a cooldown ends.
TIMER_SLACK = 0.005
_CLIENT_GONE = (ConnectionResetError, ClientConnectionResetError)
#: The cooldown reason of each kind of upstream error; None: the request is at fault, and goes back to the client.
_REASON: dict[ErrorKind, str | None] = {
    "auth": "auth", "quota": "quota", "not_found": "not_found", "retryable": "transient",
    "context_window": None, "fatal": None,
}  # fmt: skip


@dataclass(slots=True)
class Failure:
    """An upstream attempt that failed in a way another credential might not."""

    status: int | None
    reason: str
    message: str = ""
    body: bytes = b""  # the provider's error body, kept only when it is in the client's own format
    retry_after: float | None = None


#: An attempt not made: the credential is over its own rpm/tpm (the client gets a 429 only when all are).
HELD = Failure(None, "held")


class _StreamBroken(Exception):
    """The upstream stream ended badly after the client already got data."""


class _Refused(Exception):
    """The client is over one of its limits (or they cannot be checked under on-error: deny)."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict


def retry_after_seconds(value: str | None, cap: float) -> float | None:
    """Seconds from a ``Retry-After`` header, in either of its two forms, at most ``cap``.

    The upstream is not trusted with how long a credential rests: ``Retry-After: 100000000`` (or ``inf``)
    would bench it for years. Callers pass the longest cooldown they allow (``cooldowns.quota-max``).
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time()
        except (TypeError, ValueError, OverflowError):
            return None
    return min(max(0.0, seconds), cap) if not math.isnan(seconds) else None


class Exchange:
    """Routes one request: tries targets by priority and strategy, fails over, and answers the client."""

    operation = "chat"  # gen_ai.operation.name

    def __init__(
        self, proxy: Proxy, request: web.Request, runtime: Runtime, route: Route, inbound: Codec,
        payload: dict[str, Any], raw: bytes | bytearray, started: float, *, stream: bool,
        reasoning: Reasoning | None = None,
    ) -> None:  # fmt: skip
        self.proxy = proxy
        self.request = request
        self.runtime = runtime
        self.route = route
        self.inbound = inbound
        self.payload = payload
        self.raw = raw
        self.started = started
        self.stream = stream
        self.reasoning = reasoning  # from a thinking suffix: always applied through the canonical model
        self.response: web.StreamResponse | None = None
        self.upstream_seconds = 0.0
        self.usage: Usage | None = None
        self.provider = route.groups[0][0].credential.provider
        self.credential: Credential | None = None
        self.target: Target | None = None  # the last one tried: whose answer (or failure) the client got
        self.attempts = 0
        self.ttft: float | None = None  # seconds to the first streamed upstream byte
        self.span: Span | None = None  # the request's trace span, when tracing is on
        self.trace_headers: dict[str, str] | None = None  # the traceparent of the attempt in progress
        self._canonical: Request | None = None
        self.fallback_from: str | None = None  # the model asked for, once a fallback model has taken over
        # A limited client's admission, asked as the request came, is awaited before the first upstream attempt:
        # until then ``verdict`` is None.
        self.admission: Awaitable[Verdict] | None = None
        self.verdict: Verdict | None = ALLOWED

    def canonical(self) -> Request:
        """The client's request in the canonical model, decoded once, on first need."""
        if self._canonical is None:
            request = self.inbound.decode_request(self.payload)
            request.model, request.stream = self.route.model, self.stream
            if self.reasoning is not None:
                request.reasoning = self.reasoning
            apply_policy(request, self.runtime.config.hosted_tools)
            self._canonical = request
        return self._canonical

    # -- the retry loop -------------------------------------------------------------------------------

    def admit(self, admission: Awaitable[Verdict]) -> None:
        """Hold the client's admission (already asked) to the first upstream attempt."""
        self.admission, self.verdict = admission, None

    async def run(self) -> web.StreamResponse:
        try:
            return await self._run()
        except _Refused as refused:
            return await self.refuse(refused.verdict)
        except TranslationError as error:
            self.proxy.metrics.errors.labels(self.provider, "invalid_request").inc()
            return await self.reply_error(400, str(error), "untranslatable_request")
        except _CLIENT_GONE:
            self.proxy.metrics.errors.labels(self.provider, "client_closed").inc()
            return self.finish(self.response or web.Response(status=499), status=499)
        except asyncio.CancelledError:  # the client left: aiohttp cancels its handler, and so the upstream call
            self.proxy.metrics.errors.labels(self.provider, "client_closed").inc()
            self.finish(self.response or web.Response(status=499), status=499)
            raise

    async def _run(self) -> web.StreamResponse:
        """The model asked for, then its fallbacks in order while each fails in a way another model may not."""
        outcome = await self._through()
        for fallback in self.runtime.fallbacks.get(self.route.model, ()):
            if isinstance(outcome, web.StreamResponse):
                return outcome
            if self.allowed(fallback.model):
                self.fall_back(fallback, outcome)
                outcome = await self._through()
        if isinstance(outcome, web.StreamResponse):
            return outcome
        if isinstance(outcome, Failure):
            return await self.give_up(outcome)
        return await self.all_cooling(outcome)

    def allowed(self, model: str) -> bool:
        """Whether the caller's key may use ``model``: a fallback reaches no model the key could not ask for."""
        client = self.request.get(CLIENT)
        return client is None or client.allows(model)

    def fall_back(self, route: Route, outcome: Failure | float) -> None:
        reason = outcome.reason if isinstance(outcome, Failure) else "cooldown"
        self.proxy.metrics.fallbacks.labels(self.route.model, route.model, reason).inc()
        self.fallback_from = self.fallback_from or self.route.model
        self.route, self.provider = route, route.owner
        if self._canonical is not None:
            self._canonical.model = route.model

    async def _through(self) -> web.StreamResponse | Failure | float:
        """One model's targets by priority and strategy, with its retries: an answer, the last failure, or the
        wait until one of its credentials is ready again."""
        strategy, policy = self.runtime.config.routing.strategy, self.route.policy
        health = self.proxy.health
        per_round = policy.max_retry_credentials or math.inf
        failure: Failure | None = None
        wait = 0.0
        for round_ in range(policy.request_retry + 1):
            tried: set[int] = set()
            while len(tried) < per_round:
                target = health.pick(self.route, strategy, tried)
                if target is None:
                    break
                tried.add(id(target))
                outcome = await self.attempt(target)
                if not isinstance(outcome, Failure) or outcome.reason == "context_window":
                    return outcome  # an answer, or a request too long for the model whichever credential serves it
                if outcome is not HELD:
                    failure = outcome
            wait = health.soonest(self.route)
            if round_ == policy.request_retry or wait > policy.max_retry_interval:
                break
            if failure is not None and failure.reason == "no_endpoint":
                break  # a 404 for the path is an answer: waiting will not make the endpoint appear
            await self.keepalive(asyncio.sleep(wait + TIMER_SLACK))
        return failure if failure is not None else wait

    async def attempt(self, target: Target) -> web.StreamResponse | Failure:
        """One upstream attempt; traced as a client span of the request's, when tracing is on."""
        if self.admission is not None:
            admission, self.admission = self.admission, None
            self.verdict = await admission
            if not self.verdict.allowed:
                raise _Refused(self.verdict)
        tracing = self.proxy.accounting.tracing
        if tracing is None or self.span is None:
            return await self._attempt(target)
        wire = target.credential.wire
        span, self.trace_headers = tracing.upstream(
            self.span, self.operation, provider_name(target.credential.provider, wire), target.upstream_model
        )
        try:
            outcome = await self._attempt(target)
        except BaseException as error:  # the client left (cancelled), or a bad request raised
            finish(span, 0, None, None, type(error).__name__)
            raise
        if isinstance(outcome, Failure):
            finish(span, outcome.status or 0, None, None, outcome.reason)
        else:
            finish(span, outcome.status, self.usage, target.upstream_model)
        return outcome

    async def _attempt(self, target: Target) -> web.StreamResponse | Failure:
        credential = self.credential = target.credential
        self.target, self.attempts = target, self.attempts + 1
        self.provider = credential.provider
        held = await self.proxy.limits.reserve(credential)
        if held:  # over its own rpm/tpm: skipped as a resting one would be, not a failure
            self.proxy.health.hold(credential, held)
            return HELD
        self.proxy.metrics.selections.labels(credential.provider, credential.label).inc()
        series = self.proxy.metrics.provider(credential.provider)
        series.enter()
        try:
            total = self.runtime.config.timeouts.total
            if total is None or self.stream:
                return await self._call(target)
            try:
                async with asyncio.timeout(total) as deadline:
                    return await self._call(target)
            except TimeoutError:
                if not deadline.expired():
                    raise
                return self.failed(target, None, "timeout")
        finally:
            series.leave()

    async def _call(self, target: Target) -> web.StreamResponse | Failure:
        credential = target.credential
        if credential.session is not None:
            try:
                await self.keepalive(credential.session.ensure_fresh())  # waits only when the token has expired
            except RefreshRejected:
                return self.failed(target, 401, "token_rejected")
            except TokenError:
                return self.failed(target, None, "token_refresh")
        timeouts = credential.policy
        body, path, codec = self.outgoing(target, credential.codec.for_model(target.upstream_model))
        vendor = forwarded(self.request.headers, self.inbound.vendor_headers) if codec is None else None
        if self.trace_headers:
            vendor = {**(vendor or {}), **self.trace_headers}
        if not self.proxy.health.serves(target, path):
            message = f"The upstream for model '{self.route.model}' does not serve this endpoint (it answered 404)."
            return Failure(404, "no_endpoint", message)  # known already: not asked again, not counted again
        located = credential.scoped(path, target.upstream_model)
        if credential.codec.authenticates_each_request:  # a signature over this body, a token fetched anew...
            try:
                head = await self.keepalive(credential.signed_head(located, vendor, body))
            except TokenError:
                return self.failed(target, None, "token_refresh")
        else:
            head = credential.head(located, vendor)
        sent = perf_counter()
        try:
            upstream = await self.keepalive(
                self.proxy.pool.request(
                    credential.endpoint, head, body, connect_timeout=timeouts.connect, read_timeout=timeouts.read
                )
            )
        except UpstreamTimeout:
            return self.failed(target, None, "timeout")
        except UpstreamError:
            return self.failed(target, None, "connect")
        self.upstream_seconds += perf_counter() - sent
        try:
            if upstream.status >= 400:
                return await self.upstream_error(target, upstream, path, passed_through=codec is None)
            if self.stream:
                return await self.relay_stream(target, upstream, codec)
            return await self.relay_body(target, upstream, codec)
        finally:
            upstream.release()

    def outgoing(self, target: Target, upstream_codec: Codec) -> tuple[bytes | bytearray, str, Codec | None]:
        """The body and path to send ``target``, and the codec its answer is translated with (None: passed through)."""
        model = target.upstream_model
        if self.reasoning is not None or not passes_through(self.inbound, upstream_codec):
            request = for_upstream(dataclasses.replace(self.canonical(), model=model), self.inbound, upstream_codec)
            return (
                upstream_codec.encode_request(request),
                upstream_codec.upstream_path(model, self.stream),
                upstream_codec,
            )
        body: bytes | bytearray = self.raw
        if self.counts_usage_itself(upstream_codec):
            options = self.payload.get("stream_options")
            asked = {**(options if isinstance(options, dict) else {}), "include_usage": True}
            body = reencode({**self.payload, "stream_options": asked}, model)
        elif target.rewrite is not None and "model" in self.payload:
            body = reencode(self.payload, model)
        return body, self.inbound.upstream_path(model, self.stream), None

    def counts_usage_itself(self, upstream: Codec) -> bool:
        """Whether an OpenAI-shaped stream must ask for the usage its client did not, so tokens are counted."""
        if not self.stream or self.inbound not in (OPENAI_CHAT, OPENAI_COMPLETIONS):
            return False
        if upstream.name != OPENAI_CHAT.name:  # OpenAI's wire at another host counts the same way
            return False
        options = self.payload.get("stream_options")
        return not isinstance(options, dict) or options.get("include_usage") is not True

    # -- success paths --------------------------------------------------------------------------------

    async def relay_body(self, target: Target, upstream: Response, codec: Codec | None) -> web.StreamResponse | Failure:
        """A whole response: passed through with the model id rewritten, or decoded and re-encoded."""
        read_from = perf_counter()
        try:
            body = await upstream.read()
        except UpstreamError:
            return self.failed(target, None, "transient")
        self.upstream_seconds += perf_counter() - read_from
        content_type = upstream.headers.get("content-type", "application/json")
        if codec is not None:
            try:
                body, content_type = self.translated(codec, body), "application/json"
            except UpstreamFailed as error:
                return self.failed(target, error.status, "upstream_error", error.message)
            except (ValueError, KeyError, TypeError, AttributeError, IndexError):
                return self.failed(target, None, "bad_response")
        else:
            try:
                self.usage = target.credential.codec.usage_of(orjson.loads(body))
            except orjson.JSONDecodeError:  # cut short (a close-delimited body ends at any FIN): not an answer
                return self.failed(target, None, "bad_response")
            if target.rewrite is not None:
                body = target.rewrite(body)
        secret = target.credential.current_secret()
        if secret:
            body = scrub_answer(body, secret)  # after translation too: a decoded echo is re-encoded plainly
        self.proxy.health.succeed(target)
        headers = {**self.proxy_headers(), **passed_back(upstream.headers)}
        headers["Content-Type"] = content_type
        return self.finish(web.Response(body=body, status=upstream.status, headers=headers))

    def translated(self, codec: Codec, body: bytes) -> bytes:
        """A whole upstream answer in the client's format, its usage counted; a malformed one raises."""
        answer = codec.decode_body(body)
        answer.model = self.route.model
        tools = self.canonical().tools
        for part in answer.parts:
            if isinstance(part, ToolCall):
                restore_namespace(part, tools)
        self.usage = answer.usage
        return self.inbound.encode_response(answer)

    async def relay_stream(
        self, target: Target, upstream: Response, codec: Codec | None
    ) -> web.StreamResponse | Failure:
        """A stream, event by event: passed through, or translated from the provider's format to the client's."""
        relay: SSERelay | TranslatingRelay
        if codec is None:
            wire = target.credential.codec
            relay = SSERelay(target.rewrite, self.inbound.stream_end, wire, drop_usage=self.counts_usage_itself(wire))
        else:
            encoder = self.inbound.stream_encoder(self.canonical())
            relay = TranslatingRelay(codec.stream_decoder(), encoder, self.route.model)
        waited_from = perf_counter()
        try:
            first = await self.keepalive(upstream.readany())
        except UpstreamError:
            return self.failed(target, None, "transient")
        self.upstream_seconds += perf_counter() - waited_from
        if not first:
            return self.failed(target, None, "transient")
        self.ttft = perf_counter() - self.started
        self.proxy.metrics.provider(target.credential.provider).ttft.observe(self.ttft)
        response = await self.open_stream(passed_back(upstream.headers))
        secret = target.credential.current_secret()
        scrubber, pieces = (Scrubber(secret), TextScrubber(secret)) if secret else (None, None)
        chunk = first
        try:
            while chunk:
                try:
                    ready = relay.feed(chunk)
                except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
                    raise _StreamBroken from error  # the provider sent something its own format does not allow
                if ready and scrubber is not None and pieces is not None:
                    ready = pieces.feed(scrubber.feed(ready))
                if ready:
                    await response.write(ready)
                try:
                    chunk = await upstream.readany()
                except UpstreamError as error:
                    raise _StreamBroken from error
            tail = relay.flush()
            if scrubber is not None and pieces is not None:
                tail = pieces.feed(scrubber.feed(tail) + scrubber.flush()) + pieces.flush()
            if tail:
                await response.write(tail)
            if not relay.complete:  # a clean close before the terminal event is a cut, not an answer
                raise _StreamBroken
        except _StreamBroken:
            self.usage = relay.usage
            if self.proxy.health.fail(target, "transient", None, self.runtime.config.cooldowns, self.route) > 0:
                self.proxy.metrics.cooldowns.labels(target.credential.provider, "transient").inc()
            self.proxy.metrics.errors.labels(target.credential.provider, "stream_interrupted").inc()
            message = "The upstream stream was interrupted; the response is incomplete."
            # A translated stream ends through its own encoder: it knows what the client has already seen.
            broken = StreamError(502, message)
            tail = (
                relay.encoder.encode(broken) if isinstance(relay, TranslatingRelay) else self.stream_error(502, message)
            )
            await self._write_quietly(tail)
            return self.finish(response, status=502)
        except _CLIENT_GONE:
            self.usage = relay.usage
            self.proxy.metrics.errors.labels(target.credential.provider, "client_closed").inc()
            return self.finish(response, status=499)
        self.usage = relay.usage
        self.proxy.health.succeed(target)
        await self._write_quietly(None)
        return self.finish(response)

    # -- failure paths --------------------------------------------------------------------------------

    def failed(self, target: Target, status: int | None, kind: str, message: str = "", body: bytes = b"",
               retry_after: float | None = None, path: str = "") -> Failure:  # fmt: skip
        """Count a failed attempt and rest what failed; ``kind`` is the cooldown reason when it names one."""
        reason = kind if kind in REASONS else (_REASON[status_kind(status)] if status else None) or "transient"
        provider = target.credential.provider
        self.proxy.metrics.errors.labels(provider, kind).inc()
        health, config = self.proxy.health, self.runtime.config.cooldowns
        if reason == "no_endpoint":
            rested = health.fail_endpoint(target, path, config)
        else:
            rested = health.fail(target, reason, retry_after, config, self.route)
        if rested > 0:
            self.proxy.metrics.cooldowns.labels(provider, reason).inc()
        return Failure(status, kind, message, body, retry_after)

    async def upstream_error(
        self, target: Target, upstream: Response, path: str, *, passed_through: bool
    ) -> web.StreamResponse | Failure:
        try:
            body = await upstream.read()
        except UpstreamError:
            body = b""
        secret = target.credential.current_secret()
        if secret:
            body = scrub(body, secret)
        message = self._upstream_message(body, upstream.status)
        status = upstream.status
        kind = target.credential.codec.for_model(target.upstream_model).classify_error(status, body)
        reason = _REASON[kind]
        if kind == "not_found" and not names_missing_model(body, target.upstream_model):
            reason = "no_endpoint"  # the path is unknown there, not the model: rest only this endpoint
        if not passed_through:
            body = b""  # in the provider's format, not the client's: only its message travels on
        session = target.credential.session
        if reason == "auth" and session is not None and session.refresh:
            # A session token refused before its expiry (revoked, or the 403 some vendors send for a stale one):
            # refresh it now and rest the credential briefly, rather than for the half hour a bad API key gets.
            session.request_refresh()
            reason = "transient"
        if kind == "context_window":  # no other credential would do better; a fallback model may
            self.proxy.metrics.errors.labels(target.credential.provider, "context_window").inc()
            return Failure(status, kind, message, body)
        if reason is None:
            # The request itself is at fault (400, 413, 422...): no other credential would do better.
            self.proxy.metrics.errors.labels(target.credential.provider, "invalid_request").inc()
            return await self.reply_error(status, message, "upstream_error", body)
        header = upstream.headers.get("retry-after") if status == 429 else None
        retry_after = retry_after_seconds(header, self.runtime.config.cooldowns.quota_max)
        return self.failed(target, status, reason, message, body, retry_after, path)

    async def give_up(self, failure: Failure) -> web.StreamResponse:
        model = self.route.model
        if failure.reason in ("token_refresh", "token_rejected"):
            return await self.reply_error(
                502, f"No credential for model '{model}' has a usable session token: its login must be refreshed "
                "or renewed.", "upstream_token_unavailable",
            )  # fmt: skip
        if failure.status is None:
            if failure.reason == "timeout":
                return await self.reply_error(504, f"The upstream for model '{model}' timed out.", "upstream_timeout")
            return await self.reply_error(
                502, f"The upstream for model '{model}' could not be reached.", "upstream_unavailable"
            )
        if failure.reason == "auth":
            return await self.reply_error(
                502, f"Every credential for model '{model}' was refused by its provider "
                f"(HTTP {failure.status}).", "upstream_auth_error",
            )  # fmt: skip
        headers = {}
        if failure.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(failure.retry_after))
        return await self.reply_error(failure.status, failure.message, "upstream_error", failure.body, headers)

    async def all_cooling(self, wait: float) -> web.StreamResponse:
        seconds = max(1, math.ceil(wait)) if math.isfinite(wait) else 60
        self.proxy.metrics.errors.labels(self.provider, "cooldown").inc()
        return await self.reply_error(
            429, f"All credentials for model '{self.route.model}' are cooling down or rate-limited; "
            f"retry after {seconds} s.", "model_cooldown", headers={"Retry-After": str(seconds)},
            extra={"model": self.route.model, "reset_seconds": seconds},
        )  # fmt: skip

    @staticmethod
    def _upstream_message(body: bytes, status: int) -> str:
        """``error.message`` (most vendors), else a top-level ``message`` (some vendors)."""
        try:
            document = orjson.loads(body)
            error = document.get("error")
            message = error.get("message") if isinstance(error, dict) else error or document.get("message")
            if isinstance(message, str) and message:
                return message
        except (orjson.JSONDecodeError, AttributeError):
            pass
        return f"The upstream answered HTTP {status}."

    async def reply_error(
        self, status: int, message: str, code: str, upstream_body: bytes = b"",
        headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None,
    ) -> web.StreamResponse:  # fmt: skip
        """The error in the client's own format: a JSON error, or an in-stream error once a stream has begun.

        A provider's error body that is already in the client's format passes through unchanged.
        """
        if self.response is not None:
            await self._write_quietly(self.stream_error(status, message))
            return self.finish(self.response, status=status)
        body = upstream_body if _is_json_error(upstream_body) else self.inbound.encode_error(status, message, code)
        if extra:
            document = orjson.loads(body)
            document["error"].update(extra)
            body = orjson.dumps(document)
        response = web.Response(status=status, body=body, content_type="application/json")
        response.headers.update(self.proxy_headers())
        if headers:
            response.headers.update(headers)
        return self.finish(response)

    async def refuse(self, verdict: Verdict) -> web.StreamResponse:
        """The 429 (or, Redis down under on-error: deny, the 503) for a client over one of its limits; in the
        stream when a keepalive already opened it (every credential was resting before the first attempt)."""
        if verdict.limit == "unavailable":
            status, message, code = 503, "Client limits cannot be checked right now.", "limits_unavailable"
        else:
            message = f"This API key is over its {verdict.limit} limit; retry after {verdict.retry_after} s."
            status, code = 429, "rate_limit_exceeded"
        if self.response is not None:
            return await self.reply_error(status, message, code)
        refusal = web.Response(status=status, body=self.inbound.encode_error(status, message, code),
                               content_type="application/json")  # fmt: skip
        refusal.headers["Retry-After"] = str(verdict.retry_after)
        self.proxy.metrics.finish(UNRESOLVED, UNRESOLVED, status, perf_counter() - self.started)
        return refusal

    def stream_error(self, status: int, message: str) -> bytes:
        """An error event in the client's stream format."""
        encoder = self.inbound.stream_encoder(Request(model=self.route.model, messages=[]))
        return encoder.encode(StreamError(status, message))

    # -- plumbing -------------------------------------------------------------------------------------

    async def keepalive(self, awaitable: Awaitable[T]) -> T:
        """Await something slow; for streams, keep the client's connection warm with what its wire tolerates."""
        interval = self.runtime.config.streaming.keepalive_seconds
        if not self.stream or interval <= 0:
            return await awaitable
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                done, _ = await asyncio.wait((task,), timeout=interval)
                if done:
                    return task.result()
                response = await self.open_stream()
                await response.write(self.inbound.keepalive)
        except BaseException:
            task.cancel()
            raise

    async def open_stream(self, upstream_headers: Mapping[str, str] | None = None) -> web.StreamResponse:
        """The client's stream, begun on first need; the upstream's headers reach it only if it had not begun."""
        if self.response is None:
            headers = {**SSE_HEADERS, **self.proxy_headers(), **(upstream_headers or {})}
            response = web.StreamResponse(status=200, headers=headers)
            await response.prepare(self.request)
            self.response = response
        return self.response

    async def _write_quietly(self, data: bytes | None) -> None:
        if self.response is None:
            return
        try:
            if data:
                await self.response.write(data)
            await self.response.write_eof()
        except _CLIENT_GONE:
            pass

    def proxy_headers(self) -> dict[str, str]:
        overhead = max(0.0, perf_counter() - self.started - self.upstream_seconds)
        self.proxy.metrics.provider(self.provider).overhead.observe(overhead)
        headers = {OVERHEAD_HEADER: f"{overhead * 1000:.3f}", "X-Cliproxy-Provider": self.provider,
                   **dropped_header(self._canonical)}  # fmt: skip
        if self.fallback_from is not None:
            headers[FALLBACK_HEADER] = self.fallback_from
        return headers

    def finish(self, response: web.StreamResponse, status: int | None = None) -> web.StreamResponse:
        if self.usage is not None:
            self.usage = self.usage.bounded()
        usage = self.usage or Usage()
        tokens_in, tokens_out = usage.input, usage.output
        if self.credential is not None and self.usage is not None:
            self.proxy.limits.spend(self.credential, usage.total)
        self.proxy.metrics.finish(
            self.provider, self.route.model, status or response.status, perf_counter() - self.started,
            tokens_in, tokens_out,
        )  # fmt: skip
        return response


def _is_json_error(body: bytes) -> bool:
    if not body.startswith(b"{"):
        return False
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(document, dict) and isinstance(document.get("error"), dict)
