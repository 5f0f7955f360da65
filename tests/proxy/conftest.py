"""Fixtures of the proxy tests that need more than the shared ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own, killed at its end."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()
