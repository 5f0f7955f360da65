"""The namespaced operator as the chart runs it: a token that a Role confines to one namespace (issue 13).

The emulator answers this token 403 outside its namespace, as the API server does for a Role. The operator must
render without one cluster-scoped request (kopf retried namespace and CRD lists for a minute before the first
render), and when its ServiceAccount goes with the namespace (its token then answered 401) it must exit non-zero
with one clear line, not crash in a loop with a ``LoginError`` traceback.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
from pathlib import Path

import pytest

from cliproxy_operator.secret_rules import OPT_IN_LABEL

from .kube import CONFIGMAPS, CREDENTIALS, ROUTES, SECRETS, Cluster, b64, wait_for, write_kubeconfig

TOKEN = "operator-service-account-token"


@pytest.mark.one_loop
async def test_namespaced_operator_renders_within_its_role_and_exits_cleanly_when_its_token_goes(
    cluster: Cluster,
) -> None:
    if cluster.emulator is None:
        pytest.skip("a token confined to one namespace and then revoked is set up on the emulator")
    ns = cluster.namespace
    cluster.emulator.confine(TOKEN, ns)
    workdir = Path(tempfile.mkdtemp(prefix="cliproxy-namespaced-"))
    write_kubeconfig(workdir / "kubeconfig", cluster.url, TOKEN)
    await cluster.create(SECRETS, {"metadata": {"name": "keys", "labels": {OPT_IN_LABEL: "true"}},
                                   "data": {"k": b64("sk-ns")}})  # fmt: skip
    await cluster.create(CREDENTIALS, {"metadata": {"name": "c"}, "spec": {
        "provider": "groq", "apiKeys": [{"secretKeyRef": {"name": "keys", "key": "k"}}]}})  # fmt: skip
    await cluster.create(ROUTES, {"metadata": {"name": "r"}, "spec": {
        "credentials": [{"name": "c"}], "models": [{"name": "llama"}]}})  # fmt: skip

    since = cluster.mark()
    output = (workdir / "operator.log").open("wb")
    command = [str(Path(sys.executable).parent / "cliproxy-operator"), "--namespace", ns, "--log-format", "plain"]
    bin_dir = Path(sys.executable).parent
    env = {"PYTHONUNBUFFERED": "1", "PATH": f"{bin_dir}:/usr/bin:/bin", "KUBECONFIG": str(workdir / "kubeconfig")}
    process = await asyncio.create_subprocess_exec(*command, env=env, stdout=output, stderr=output)
    try:

        async def rendered() -> bool:
            assert process.returncode is None, f"the operator exited ({process.returncode})"
            return await cluster.get(CONFIGMAPS, "cliproxy-default", ns) is not None

        await wait_for(rendered, 60.0, message="the namespaced operator never rendered the gateway")
        outside = [r for r in cluster.log()[since:] if r.by_operator and r.resource and r.namespace != ns]
        assert not outside, f"requests a Role refuses: {sorted({f'{r.method} {r.path}' for r in outside})}"

        await cluster.emulator.revoke(TOKEN)  # the namespace and its ServiceAccount are gone
        await wait_for(lambda: process.returncode is not None, 60.0, message="the operator kept running")
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
        output.close()
    text = (workdir / "operator.log").read_text(errors="replace")
    assert process.returncode == 1, text[-3000:]
    assert "cannot log in to the Kubernetes API" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
