"""An OpenAI chat completions upstream that fails a share of its requests at random: the fault-injection load.

Faults are drawn from a seeded RNG, so a run is repeatable up to the order concurrency imposes. Each fault is
what providers really do under load: ``429`` and ``500`` with OpenAI's error bodies, and dropped connections, a
reset (RST) before the answer or part-way through a stream, or a clean FIN part-way through a body or stream.
What it cuts is close-delimited (no length, no chunking: ``Connection: close``, as behind some load balancers),
so a clean FIN looks complete at the HTTP level: only the missing ``[DONE]`` and ``finish_reason`` of a stream,
or the half-written JSON of a body, tell.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

KINDS = ("429", "500", "reset", "fin")


def _error(status: int, message: str, kind: str, code: str | None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


@dataclass
class FaultyUpstream:
    """One upstream: its key, its model, its fault rate and RNG, and a count of what it did."""

    key: str
    model: str
    rate: float = 0.1
    seed: int = 0
    fault_delay: float = 0.02  # an overloaded upstream fails after working on the request a while
    kinds: tuple[str, ...] = KINDS
    cut: int | None = None  # where a dropped stream stops, in events (else anywhere, at random)
    outcomes: Counter[str] = field(default_factory=Counter)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def fault(self, stream: bool) -> str | None:
        if self.rng.random() >= self.rate:
            return None
        return self.rng.choice(self.kinds)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.complete)
        return app

    async def complete(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        body = orjson.loads(await request.read())
        if body.get("model") != self.model:
            return _error(404, f"The model `{body.get('model')}` does not exist.", "invalid_request_error",
                          "model_not_found")  # fmt: skip
        stream = body.get("stream") is True
        fault = self.fault(stream)
        self.outcomes[fault or "ok"] += 1
        if fault is not None and self.fault_delay:
            await asyncio.sleep(self.fault_delay)
        if fault == "429":
            return _error(429, "Rate limit reached for requests per min (RPM).", "requests", "rate_limit_exceeded")
        if fault == "500":
            message = "The server had an error while processing your request. Sorry about that!"
            return _error(500, message, "server_error", None)
        if fault == "reset" and not stream:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()  # never sent: the connection is gone
        words = reply_words(body)
        if stream:
            return await self._stream(request, words, fault)
        document = orjson.dumps(self._completion(words))
        if fault != "fin":
            return web.Response(body=document, content_type="application/json")
        response = self._close_delimited(web.StreamResponse(headers={"Content-Type": "application/json"}))
        await response.prepare(request)
        await response.write(document[: len(document) // 2])
        assert request.transport is not None
        request.transport.close()  # half a body, then a clean FIN: with no length, nothing says it is short
        return response

    @staticmethod
    def _close_delimited(response: web.StreamResponse) -> web.StreamResponse:
        """No length, no chunking: the body ends where the connection does."""
        response._length_check = False
        response.force_close()
        return response

    def _completion(self, words: list[str]) -> dict[str, Any]:
        message = {"role": "assistant", "content": " ".join(words), "refusal": None}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)},
        }  # fmt: skip

    async def _stream(self, request: web.Request, words: list[str], fault: str | None) -> web.StreamResponse:
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self.model, "system_fingerprint": None}  # fmt: skip

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
        events += [chunk({}, "stop"), b"data: [DONE]\n\n"]
        cut = len(events)
        if fault in ("reset", "fin"):
            cut = self.rng.randrange(len(events)) if self.cut is None else self.cut
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await self._close_delimited(response).prepare(request)
        for event in events[:cut]:
            await response.write(event)
        assert request.transport is not None
        if fault == "reset":
            request.transport.abort()
        elif fault == "fin":
            request.transport.close()
        else:
            await response.write_eof()
        return response


def reply_words(body: dict[str, Any]) -> list[str]:
    """The answer: the last user message, echoed word by word."""
    content = body["messages"][-1].get("content")
    return f"echo: {content}".split()
