"""``make clients``: the clients people run, driven through the proxy at scripted upstreams, as a table.

Every client (the Python SDKs, litellm, Claude Code and Codex CLI) talks to the proxy; the proxy serves four models,
one per upstream wire (the strict fakes of ``tests/fakes``: OpenAI chat, Anthropic, Gemini, the Responses API), so
each client meets its own format (same-format) and the three others (cross-format). Upstreams answer after a delay
longer than the proxy's keep-alive interval, so every stream also meets keep-alives. Nothing reaches the internet.

Run: ``python -m tests.clients.matrix [--npm DIR]`` from the repository root (``make clients`` installs the clients).
Exit status 1 when any cell fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from cliproxy_proxy.__main__ import load_app
from cliproxy_proxy.demo_upstream import Upstream, create_demo_app
from cliproxy_proxy.loader import ConfigSource
from tests.fakes.anthropic_upstream import DEFAULT_KEY as ANTHROPIC_KEY
from tests.fakes.anthropic_upstream import AnthropicUpstream, create_anthropic_app
from tests.fakes.gemini_upstream import GEMINI_KEY, GeminiUpstream, create_gemini_app
from tests.fakes.responses_upstream import KEYS as RESPONSES_KEYS
from tests.fakes.responses_upstream import ResponsesUpstream, create_responses_app

CLIENT_KEY = "matrix-client-key"
TARGETS = {"openai": "m-openai", "anthropic": "m-anthropic", "gemini": "m-gemini", "responses": "m-responses"}
SAME_FORMAT = {"openai": "openai", "openai-responses": "responses", "anthropic": "anthropic", "google-genai": "gemini",
               "litellm openai/": "openai", "litellm anthropic/": "anthropic", "litellm gemini/": "gemini",
               "claude-code": "anthropic", "codex": "responses"}  # fmt: skip
UPSTREAM_DELAY = 0.3  # seconds each upstream waits before answering
KEEPALIVE = 0.1  # the proxy's keep-alive interval: shorter, so streams carry keep-alives


class Harness:
    """The fakes and the proxy, served on loopback by an event loop in a thread of their own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.servers: list[TestServer] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="cliproxy-clients-"))

    def run(self, coroutine: Awaitable[Any]) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]
        return future.result(120)

    async def _serve(self, app: web.Application, delayed: bool = True) -> str:
        if delayed:
            app.middlewares.append(_delay)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        self.servers.append(server)
        return str(server.make_url("")).rstrip("/")

    async def _start(self) -> str:
        openai_url = await self._serve(create_demo_app(Upstream(("up-small",), frozenset({"key-a"}))))
        claude_url = await self._serve(create_anthropic_app(AnthropicUpstream()))
        gemini_url = await self._serve(create_gemini_app(GeminiUpstream()))
        codex_url = await self._serve(create_responses_app(ResponsesUpstream()))
        config = {
            "api-keys": [CLIENT_KEY], "max-retry-interval": 0, "streaming": {"keepalive-seconds": KEEPALIVE},
            "openai-compatibility": [{"name": "openai", "base-url": f"{openai_url}/v1",
                                      "api-key-entries": [{"api-key": "key-a"}],
                                      "models": [{"name": "up-small", "alias": "m-openai"}]}],
            "claude-api-key": [{"api-key": ANTHROPIC_KEY, "base-url": claude_url,
                                "models": [{"name": "claude-sonnet-4-6", "alias": "m-anthropic"}]}],
            "gemini-api-key": [{"api-key": GEMINI_KEY, "base-url": gemini_url,
                                "models": [{"name": "gemini-2.5-flash", "alias": "m-gemini"}]}],
            "codex-api-key": [{"api-key": sorted(RESPONSES_KEYS)[0], "base-url": f"{codex_url}/v1",
                               "models": [{"name": "gpt-5-codex", "alias": "m-responses"}]}],
        }  # fmt: skip
        path = self.workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return await self._serve(load_app(ConfigSource(path), 1.0), delayed=False)

    def start(self) -> str:
        self.thread.start()
        url: str = self.run(self._start())
        return url

    def stop(self) -> None:
        async def close() -> None:
            for server in reversed(self.servers):
                await server.close()

        with contextlib.suppress(Exception):
            self.run(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        shutil.rmtree(self.workdir, ignore_errors=True)


@web.middleware
async def _delay(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    if request.method == "POST":
        await asyncio.sleep(UPSTREAM_DELAY)
    return await handler(request)


# -- the clients ----------------------------------------------------------------------------------------
# Each takes the proxy's URL and a model, returns what it got (asserting on it), or raises with the reason.

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _openai(url: str, model: str) -> str:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello matrix"}])
    assert "hello matrix" in (reply.choices[0].message.content or ""), reply
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Paris"}],
                                            tools=[tool], stream=True)  # type: ignore[list-item]  # fmt: skip
    names = [c.function.name for chunk in stream if chunk.choices for c in chunk.choices[0].delta.tool_calls or []
             if c.function and c.function.name]  # fmt: skip
    assert names == ["get_weather"], names
    return "chat, streamed tool call"


def _openai_responses(url: str, model: str) -> str:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0)
    reply = client.responses.create(model=model, input="hello matrix")
    assert "hello matrix" in reply.output_text, reply
    with client.responses.stream(model=model, input="streamed hello") as stream:
        final = stream.get_final_response()
    assert "streamed hello" in final.output_text
    return "create, stream"


def _anthropic(url: str, model: str) -> str:
    import anthropic

    client = anthropic.Anthropic(base_url=url, api_key=CLIENT_KEY, max_retries=0)
    reply = client.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": "hello matrix"}])
    assert "hello matrix" in reply.content[0].text, reply  # type: ignore[union-attr]
    with client.messages.stream(model=model, max_tokens=64,
                                messages=[{"role": "user", "content": "streamed hello"}]) as stream:  # fmt: skip
        assert "streamed hello" in stream.get_final_text()
    assert client.models.retrieve(model).type == "model"
    return "create, stream, models.retrieve"


def _genai(url: str, model: str) -> str:
    from google import genai
    from google.genai import types

    client = genai.Client(api_key=CLIENT_KEY, http_options=types.HttpOptions(base_url=url))
    reply = client.models.generate_content(model=model, contents="hello matrix")
    assert "hello matrix" in (reply.text or "") and reply.model_version == model, reply
    text = "".join(c.text or "" for c in client.models.generate_content_stream(model=model, contents="streamed"))
    assert "streamed" in text, text
    assert f"models/{model}" in [m.name for m in client.models.list()]

    async def stream_async() -> str:
        chunks = await client.aio.models.generate_content_stream(model=model, contents="async stream")
        return "".join([c.text or "" async for c in chunks])

    assert "async stream" in asyncio.run(stream_async())
    return "generate, stream (sync+async), models.list"


def _litellm(prefix: str) -> Callable[[str, str], str]:
    def run(url: str, model: str) -> str:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: no fetch of its price list
        import litellm

        litellm.suppress_debug_info = True

        base = {"openai/": f"{url}/v1", "anthropic/": url, "gemini/": f"{url}/v1beta"}[prefix]
        messages = [{"role": "user", "content": "hello matrix"}]
        reply = litellm.completion(model=prefix + model, api_base=base, api_key=CLIENT_KEY, messages=messages)
        assert "hello matrix" in (reply.choices[0].message.content or ""), reply  # type: ignore[union-attr]
        stream = litellm.completion(model=prefix + model, api_base=base, api_key=CLIENT_KEY, stream=True,
                                    messages=[{"role": "user", "content": "streamed hello"}])  # fmt: skip
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)  # type: ignore[union-attr]
        assert "streamed hello" in text, repr(text)
        return "completion, stream"

    return run


def _claude_code(npm: Path) -> Callable[[str, str], str]:
    def run(url: str, model: str) -> str:
        home = Path(tempfile.mkdtemp(prefix="cc-home-"))
        env = {**_base_env(home), "ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": CLIENT_KEY,
               "ANTHROPIC_MODEL": model, "ANTHROPIC_SMALL_FAST_MODEL": model,
               "ANTHROPIC_DEFAULT_HAIKU_MODEL": model, "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
               "ANTHROPIC_DEFAULT_OPUS_MODEL": model, "DISABLE_TELEMETRY": "1",
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
               "DISABLE_ERROR_REPORTING": "1"}  # fmt: skip
        result = _cli([str(npm / "node_modules/.bin/claude"), "-p", "hello matrix", "--output-format", "json"],
                      env, home)  # fmt: skip
        answer = json.loads(result.stdout.strip().splitlines()[-1])
        assert answer.get("subtype") == "success" and not answer.get("is_error"), answer
        # The fakes call the first declared tool (Claude Code's own, run for real) then echo: a whole tool loop.
        return f"-p, {answer.get('num_turns')} turns: {str(answer.get('result'))[:40]!r}"

    return run


def _codex(npm: Path) -> Callable[[str, str], str]:
    def run(url: str, model: str) -> str:
        home = Path(tempfile.mkdtemp(prefix="codex-home-"))
        (home / "config.toml").write_text(f"""model = "{model}"
model_provider = "gateway"
approval_policy = "never"
sandbox_mode = "read-only"
check_for_update_on_startup = false

[analytics]
enabled = false

[model_providers.gateway]
name = "gateway"
base_url = "{url}/v1"
env_key = "GATEWAY_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
""")
        env = {**_base_env(home), "CODEX_HOME": str(home), "GATEWAY_KEY": CLIENT_KEY}
        result = _cli(
            [str(npm / "node_modules/.bin/codex"), "exec", "--skip-git-repo-check", "hello matrix"], env, home
        )
        assert result.stdout.strip(), result.stderr[-300:]
        last = result.stdout.strip().splitlines()[-1]
        return f"exec, default tools (namespace, web_search): {last[:40]!r}"

    return run


def _base_env(home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "NO_PROXY": "127.0.0.1,localhost"}


def _cli(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=180,
                                stdin=subprocess.DEVNULL)  # fmt: skip
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    if result.returncode != 0:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        errors = [line for line in lines if "error" in line.lower()] or lines
        raise AssertionError(f"exit {result.returncode}: {' | '.join(errors[-2:])}")
    return result


def clients(npm: Path | None) -> Iterator[tuple[str, Callable[[str, str], str] | str]]:
    """Every client, or why it cannot run here."""
    yield "openai", _openai
    yield "openai-responses", _openai_responses
    yield "anthropic", _anthropic
    yield "google-genai", _genai
    try:
        import litellm  # noqa: F401
    except ImportError:
        for prefix in ("openai/", "anthropic/", "gemini/"):
            yield f"litellm {prefix}", "litellm is not installed"
    else:
        for prefix in ("openai/", "anthropic/", "gemini/"):
            yield f"litellm {prefix}", _litellm(prefix)
    for name, binary, run in (("claude-code", "claude", _claude_code), ("codex", "codex", _codex)):
        if npm is not None and (npm / "node_modules/.bin" / binary).exists():
            yield name, run(npm)
        else:
            yield name, f"not installed (npm install --prefix {npm or 'DIR'} ...)"


def _reason(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text[:240]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npm", type=Path, help="npm prefix holding @anthropic-ai/claude-code and @openai/codex")
    parser.add_argument("--only", help="run only the clients whose name contains this")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = parser.parse_args(argv)
    harness = Harness()
    url = harness.start()
    rows: list[tuple[str, str, str, str]] = []
    try:
        for name, run in clients(args.npm.resolve() if args.npm else None):
            if args.only and args.only not in name:
                continue
            for target, model in TARGETS.items():
                kind = "same" if SAME_FORMAT[name] == target else "cross"
                if isinstance(run, str):
                    rows.append((name, target, kind, f"skip: {run}"))
                    continue
                try:
                    rows.append((name, target, kind, "ok: " + run(url, model)))
                except Exception as error:
                    if args.verbose:
                        traceback.print_exc()
                    rows.append((name, target, kind, "FAIL: " + _reason(error)))
                print(f"{name:<20} {target:<10} {rows[-1][3][:90]}", file=sys.stderr, flush=True)
    finally:
        harness.stop()
    widths = [max(len(r[i]) for r in [*rows, ("client", "upstream", "format", "")]) for i in range(3)]
    print(f"{'client':<{widths[0]}}  {'upstream':<{widths[1]}}  {'format':<{widths[2]}}  result")
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    failed = sum(r[3].startswith("FAIL") for r in rows)
    print(f"{len(rows) - failed} ok or skipped, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
