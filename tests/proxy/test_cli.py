"""The real processes: `python -m cliproxy_proxy` beside the demo upstream, as `make run` starts them."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from tests.support.runtime_user import as_runtime_user, check_runtime_user, runtime_user_env

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, headers: dict[str, str] | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


@pytest.fixture
def demo_upstream() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cliproxy_proxy.demo_upstream", "--port", str(port), "--key", "demo-key-1",
         "--key", "demo-key-2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models", {"Authorization": "Bearer demo-key-1"})
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(10)


def test_invalid_config_exits_2_naming_the_path(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("groq:\n  - api-key: sk-secret-value\n    base-url: nope\n")
    result = subprocess.run([sys.executable, "-m", "cliproxy_proxy", "--config", str(config)],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 2
    assert "groq[0].base-url: must be an absolute http/https URL" in result.stderr
    assert "sk-secret-value" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_example_config_serves_and_drains_on_sigterm(tmp_path: Path, demo_upstream: str) -> None:
    """The shipped example, re-pointed at this run's demo port, answers the SDK; SIGTERM lets a stream finish.

    The installed ``cliproxy-proxy`` runs as the image runs it: uid 10001 with no passwd entry, no USER or HOME.
    """
    check_runtime_user()
    example = yaml.safe_load((ROOT / "examples" / "config.yaml").read_text())
    for block in ("groq", "openai-compatibility", "claude-api-key"):
        for entry in example[block]:
            entry["base-url"] = demo_upstream.removesuffix("/v1") if block == "claude-api-key" else demo_upstream
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(example))
    port = free_port()
    process = subprocess.Popen(
        as_runtime_user(["cliproxy-proxy", "--config", str(config), "--port", str(port), "--log-format", "json"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/", env=runtime_user_env(),
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="demo-client-key", max_retries=0)
        ids = {m.id for m in client.models.list()}
        assert {"fast/llama-3.1-8b", "team-default", "claude-prod/claude-3-5-sonnet"} <= ids
        reply = client.chat.completions.create(model="fast/llama-3.1-8b", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "echo: hi"
        claude = client.chat.completions.create(  # through the Anthropic translation
            model="claude-prod/claude-3-5-sonnet", messages=[{"role": "user", "content": "hi claude"}]
        )
        assert (claude.choices[0].message.content, claude.model) == ("echo: hi claude", "claude-prod/claude-3-5-sonnet")

        long_prompt = " ".join(f"w{i}" for i in range(40))
        stream = client.chat.completions.create(
            model="team-default", messages=[{"role": "user", "content": long_prompt}], stream=True
        )
        first = next(iter(stream))
        process.send_signal(signal.SIGTERM)
        rest = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert (first.choices[0].delta.content or "") + "".join(rest) == f"echo: {long_prompt}"
        assert process.wait(15) == 0
    finally:
        process.kill()
        _, stderr = process.communicate()
    assert "demo-key-1" not in stderr and "demo-client-key" not in stderr
    assert '"message": "serving' in stderr
