"""The `make clients` harness keeps working: one client through it, every upstream, in the test suite's time."""

from __future__ import annotations

import pytest

from . import matrix


def test_the_matrix_runs_a_client_against_every_upstream(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(matrix, "UPSTREAM_DELAY", 0.1)  # still longer than the keep-alive interval
    monkeypatch.setattr(matrix, "KEEPALIVE", 0.04)
    assert matrix.main(["--only", "openai-responses"]) == 0
    table = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in table if line.startswith("openai-responses")]
    assert [(row[1], row[2], row[3]) for row in rows] == [
        ("openai", "cross", "ok:"), ("anthropic", "cross", "ok:"), ("gemini", "cross", "ok:"),
        ("responses", "same", "ok:"),
    ]  # fmt: skip
