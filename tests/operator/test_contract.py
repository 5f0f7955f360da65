"""The operator shares the proxy's config, catalog and token formats through one named contract, and nothing else."""

from __future__ import annotations

import subprocess
import sys

#: What importing every operator module may load of the proxy: the contract and what it is made of.
ALLOWED = {
    "cliproxy_proxy", "cliproxy_proxy.contract", "cliproxy_proxy.catalog", "cliproxy_proxy.config",
    "cliproxy_proxy.compat", "cliproxy_proxy.counters", "cliproxy_proxy.oauth", "cliproxy_proxy.oauth.base",
    "cliproxy_proxy.oauth.formats", "cliproxy_proxy.oauth.kiro", "cliproxy_proxy.oauth.tokens",
    "cliproxy_proxy.store",  # the proxies' Redis connector: usage is read where they count, Sentinel or Cluster
}  # fmt: skip

PROBE = """
import importlib, pkgutil, sys
import cliproxy_operator
for module in pkgutil.iter_modules(cliproxy_operator.__path__):
    importlib.import_module("cliproxy_operator." + module.name)
print("\\n".join(sorted(name for name in sys.modules if name.startswith("cliproxy_proxy"))))
"""


def test_importing_the_operator_loads_no_codec_server_or_pool() -> None:
    loaded = set(subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True,
                                timeout=120).stdout.split())  # fmt: skip
    assert "cliproxy_proxy.contract" in loaded
    assert not {name for name in loaded if name.startswith("cliproxy_proxy.translate")}, loaded
    assert loaded <= ALLOWED, f"the operator loads more of the proxy than its contract: {sorted(loaded - ALLOWED)}"
