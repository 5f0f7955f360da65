"""Fixtures for the operator tests: a Kubernetes API (``cluster``) and the operator running against it.

``cluster`` is parametrised: "emulator" (kmock, in memory, always) and "envtest" (a real etcd + kube-apiserver
from ``$KUBEBUILDER_ASSETS``, skipped when the binaries are not there). Either way the operator reaches it through
the kubeconfig at ``$KUBECONFIG`` (set by the root conftest before ``kubernetes`` is imported), unmodified.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import kmock
import pytest
import uvloop

import cliproxy_operator.tokens

from .kube import (
    Cluster,
    Emulator,
    EnvTest,
    OperatorRunner,
    emulator_log,
    envtest_assets,
    setup_emulator,
    write_kubeconfig,
)

HANDLERS = "cliproxy_operator.handlers"
ENVTEST_MISSING = (
    "envtest: set KUBEBUILDER_ASSETS to a directory holding the etcd and kube-apiserver binaries "
    "(e.g. `setup-envtest use -p path`) to run these tests against a real API server"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "handlers(module): the kopf handler module the operator fixture runs")


def kubeconfig_path() -> str:
    """The kubeconfig the tests may write: only the temporary one the root conftest chose, never a user's own."""
    path = os.environ.get("KUBECONFIG", "")
    if not path or not Path(path).parent.name.startswith("cliproxy-kube-"):
        pytest.skip(f"KUBECONFIG={path!r} is not the tests' temporary kubeconfig: unset it to run the operator tests")
    return path


@pytest.fixture(scope="session")
def envtest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvTest]:
    """One real API server for the whole session (each test gets a namespace of its own)."""
    assets = envtest_assets()
    if assets is None:
        pytest.skip(ENVTEST_MISSING)
    server = EnvTest(assets, tmp_path_factory.mktemp("envtest"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(
    params=[
        "emulator",
        pytest.param("envtest", marks=pytest.mark.skipif(envtest_assets() is None, reason=ENVTEST_MISSING)),
    ]
)
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """A Kubernetes API with the project's CRDs served, the kubeconfig pointing at it, and a fresh namespace."""
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    if request.param == "emulator":
        async with Emulator() as emulator, kmock.Server(emulator) as server:
            setup_emulator(emulator)
            url = str(server.url).rstrip("/")
            write_kubeconfig(kubeconfig_path(), url)
            async with Cluster("emulator", url, namespace, emulator_log(emulator), emulator=emulator) as api:
                yield api
    else:
        env: EnvTest = request.getfixturevalue("envtest_server")
        assert env.proxy is not None
        write_kubeconfig(kubeconfig_path(), env.proxy.url, env.token)
        async with Cluster("envtest", env.proxy.url, namespace, env.proxy.log, token=env.token) as api:
            await api.ensure_namespace(namespace)
            try:
                yield api
            finally:
                await api.purge_namespace()


@pytest.fixture
async def operator(request: pytest.FixtureRequest, cluster: Cluster) -> AsyncIterator[OperatorRunner]:
    """The operator, running against ``cluster`` and watching; ``await operator.stop()``/``start()`` restart it.

    It runs in a thread with its own event loop, uvloop when the test runs on uvloop. Start-up returns once kopf's
    WATCH requests for every resource the handlers register for (routes, credentials, Secrets, ConfigMaps) have
    reached the API, so objects created afterwards are seen as they are created.
    """
    marker = request.node.get_closest_marker("handlers")
    module = marker.args[0] if marker else HANDLERS
    pytest.importorskip(module, reason=f"{module} is not importable yet")
    factory = uvloop.new_event_loop if isinstance(asyncio.get_running_loop(), uvloop.Loop) else asyncio.new_event_loop
    runner = OperatorRunner(cluster, module, loop_factory=factory)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


@pytest.fixture
def fast_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check every 0.3 s, refresh 4 s ahead (a loaded machine propagates in time); set before handlers import."""
    monkeypatch.setattr(cliproxy_operator.tokens, "CHECK_SECONDS", 0.3)
    monkeypatch.setattr(cliproxy_operator.tokens, "REFRESH_MARGIN", 4.0)
