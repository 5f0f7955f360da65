"""The real ``cliproxy-operator`` entry point, run as the image runs it: a uid with no passwd entry.

kopf's default peering identity asked the passwd database who we are, and crashed in the image only. This runs
the installed console script as uid 10001 (``tests/support/runtime_user.py``) and waits until it renders a
gateway, then stops it with SIGTERM as the kubelet would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from cliproxy_operator.secret_rules import OPT_IN_LABEL
from tests.support.runtime_user import as_runtime_user, check_runtime_user, runtime_user_env

from .kube import CONFIGMAPS, CREDENTIALS, ROUTES, SECRETS, Cluster, b64, get_object, wait_for, write_kubeconfig
from .scale import NAMESPACES


async def test_operator_starts_and_renders_as_a_uid_without_passwd_entry(cluster: Cluster) -> None:
    if cluster.kind != "emulator":
        pytest.skip("one API backend is enough for the entry point")
    check_runtime_user()
    kubeconfig = Path(tempfile.mkdtemp(prefix="cliproxy-uid-")) / "kubeconfig"
    write_kubeconfig(kubeconfig, cluster.url)
    ns = cluster.namespace
    await cluster.request("POST", "/api/v1/namespaces", json_body={"metadata": {"name": ns}})
    opted_in = {"name": "keys", "labels": {OPT_IN_LABEL: "true"}}
    await cluster.create(SECRETS, {"metadata": opted_in, "data": {"k": b64("sk-uid")}})
    await cluster.create(CREDENTIALS, {"metadata": {"name": "c"}, "spec": {
        "provider": "groq", "apiKeys": [{"secretKeyRef": {"name": "keys", "key": "k"}}]}})  # fmt: skip
    await cluster.create(ROUTES, {"metadata": {"name": "r"}, "spec": {
        "credentials": [{"name": "c"}], "models": [{"name": "llama"}]}})  # fmt: skip

    process = await asyncio.create_subprocess_exec(
        *as_runtime_user(["cliproxy-operator", "--all-namespaces", "--log-format", "plain"]), cwd="/",
        env=runtime_user_env(KUBECONFIG=str(kubeconfig)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:

        async def rendered() -> bool:
            assert process.returncode is None, f"the operator exited ({process.returncode})"
            return await cluster.get(CONFIGMAPS, "cliproxy-default", ns) is not None

        await wait_for(rendered, 30.0, message="the operator started as uid 10001 never rendered the gateway")
        await cluster.settle()  # the statuses too
        since = cluster.mark()  # the namespace goes: nothing more is written there, and SIGTERM still stops it
        await cluster.request("DELETE", f"/api/v1/namespaces/{ns}")

        async def gone() -> bool:
            assert cluster.emulator is not None
            return await get_object(cluster.emulator, NAMESPACES, None, ns) is None  # type: ignore[arg-type]

        await wait_for(gone, 10.0, message="the namespace was not deleted")
        await cluster.settle(since=since)
    finally:
        process.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        try:
            output, _ = await asyncio.wait_for(process.communicate(), 20)
        except TimeoutError:
            process.kill()
            output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert "getpwuid" not in text and "Traceback" not in text, text[-3000:]
    assert process.returncode in (0, -signal.SIGTERM), text[-3000:]
    assert time.monotonic() - stopping < 10, f"SIGTERM took {time.monotonic() - stopping:.1f} s\n{text[-3000:]}"
    assert cluster.write_counts(since=since) == {}, "the operator wrote in a namespace being deleted"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the signal's byte, dropped
def test_sigterm_is_heard_when_the_loops_self_pipe_is_full() -> None:
    """asyncio hears a signal through a byte in its self-pipe; a pipe full of thread wake-ups drops that byte
    (kopf's handler never ran and the operator ignored SIGTERM). The operator's own handler does not need it."""
    from cliproxy_operator.__main__ import stop_on_signals

    loop, stop, heard = asyncio.new_event_loop(), asyncio.Event(), []
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        loop.add_signal_handler(signal.SIGTERM, heard.append, "asyncio")  # as kopf puts its handler in
        stop_on_signals(loop, stop)
        pipe = loop._csock  # type: ignore[attr-defined]
        with contextlib.suppress(BlockingIOError):
            while True:  # what a few hundred to_thread results do while the loop is busy
                pipe.send(b"\0")
        os.kill(os.getpid(), signal.SIGTERM)
        loop.run_until_complete(asyncio.wait_for(stop.wait(), 5))
        assert heard == [], "the pipe was not full: this test proved nothing"
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.close()
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_check_flag_runs_the_start_up_path_as_the_runtime_user() -> None:
    """What the image build runs (deploy/docker/operator.Dockerfile): identity and handlers, without a cluster."""
    check_runtime_user()
    result = subprocess.run(as_runtime_user(["cliproxy-operator", "--check"]), capture_output=True, text=True,
                            cwd="/", env=runtime_user_env(), timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "start-up check passed" in result.stdout and "Traceback" not in result.stderr


def test_identity_prefers_the_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from cliproxy_operator.__main__ import identity

    monkeypatch.setenv("POD_NAME", "cliproxy-operator-7d9f-abcde")
    assert identity() == "cliproxy-operator-7d9f-abcde"
    monkeypatch.delenv("POD_NAME")
    monkeypatch.delenv("POD_ID", raising=False)
    assert identity() != identity(), "outside a pod two operators must not share an identity"


def test_a_namespaced_operator_watches_nothing_cluster_scoped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Role grants nothing cluster-wide: namespaced, the operator must not wait on a namespace watch it may not
    have (kopf retried such lists for a minute before the first render)."""
    from kopf._core.intents import registries

    from cliproxy_operator.kube import NAMESPACES_ENV

    from .kube import _fresh_import, watched_resources

    watched = {}
    for scope in ("", "team-a"):
        monkeypatch.setenv(NAMESPACES_ENV, scope)
        registry = registries.SmartOperatorRegistry()
        _fresh_import("cliproxy_operator.handlers", registry)
        watched[scope] = watched_resources(registry)
    assert "v1/namespaces" in watched[""]  # all namespaces: a namespace being deleted is left alone
    assert "v1/namespaces" not in watched["team-a"]
    assert watched[""] - {"v1/namespaces"} == watched["team-a"]
