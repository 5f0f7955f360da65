"""The chart, rendered offline, and readers of what it renders: shared by the chart's test modules.

helm-python-sdk embeds the real Helm Go library (no helm binary, no cluster); without it the importing test
modules are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "cliproxy"
KUBE_VERSION = "1.33"
RELEASE, NAMESPACE = "rel", "cliproxy"
PROXY, OPERATOR = f"{RELEASE}-cliproxy-proxy", f"{RELEASE}-cliproxy-operator"
CRD_KINDS = {"keda.sh", "monitoring.coreos.com"}  # API groups validated structurally, not by kubernetes-validate
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "keda": {"autoscaling": {"keda": {"enabled": True, "providers": [{"name": "openai", "threshold": "16"}]}}},
    "hpa-inflight": {"autoscaling": {"hpa": {"inFlight": {"enabled": True}}}},
    "no-autoscaling": {"autoscaling": {"enabled": False}},
    "servicemonitor": {"serviceMonitor": {"enabled": True, "additionalLabels": {"release": "kps"}}},
    "metrics-port": {"proxy": {"metricsPort": 9464}, "serviceMonitor": {"enabled": True}},
    "dashboard": {"dashboard": {"enabled": True}},
    "sidecar": {"proxy": {"enabled": False}},
    "sidecar-rbac": {
        "proxy": {"enabled": False, "gateway": "team-a"},
        "sidecar": {"rbac": {"serviceAccountName": "my-app"}},
    },
    "no-kube-source": {"proxy": {"kubeSource": {"enabled": False}}},
    "existing-sa": {"proxy": {"serviceAccount": {"create": False, "name": "shared-sa"}}},
    "namespaced": {"operator": {"namespaced": True, "watchNamespaces": ["team-a", "team-b"]}},
    "peering": {"operator": {"peering": "cliproxy", "priority": 5}},
    "no-policies": {"admissionPolicy": {"enabled": False}, "networkPolicy": {"enabled": False}},
    "network-from": {
        "networkPolicy": {"allowSameNamespace": False, "from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}
    },
    "redis-url": {"redis": {"url": "rediss://redis.infra:6380/1", "existingSecret": "redis-auth"}},
    "redis-bundled": {"redis": {"bundled": {"enabled": True}}},
    "redis-cluster-otel": {
        "redis": {"url": "redis://redis-cluster.infra:6379", "cluster": True},
        "otel": {"enabled": True, "endpoint": "http://otel:4318", "headers": {"existingSecret": "otel-auth"}},
    },
    "everything": {
        "autoscaling": {"keda": {"enabled": True}},
        "serviceMonitor": {"enabled": True},
        "dashboard": {"enabled": True},
        "proxy": {"gateway": "team-a", "podDisruptionBudget": {"maxUnavailable": 1}},
    },
}


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)


def objects(out: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for path, text in out.items():
        if path.endswith(".txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def rbac_rules() -> list[dict[str, Any]]:
    return yaml.safe_load((ROOT / "deploy" / "rbac" / "operator.yaml").read_text())["rules"]
