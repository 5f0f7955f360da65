"""The chart's admission policy (the same rules as deploy/policies/) and the proxy's NetworkPolicy."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from .chart import CHART, KUBE_VERSION, NAMESPACE, PROXY, RELEASE, ROOT, VARIANTS, find, objects, one, render

POLICY = f"{RELEASE}-cliproxy-secret-references"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """The variants these tests read (test_chart.py validates every variant's objects)."""
    return {name: objects(render(VARIANTS[name])) for name in ("default", "no-policies", "network-from", "sidecar")}


def test_policy_file_is_an_identical_copy() -> None:
    source = ROOT / "deploy" / "policies" / "secret-references.yaml"
    assert (CHART / "files" / "admission-policy.yaml").read_bytes() == source.read_bytes()


def test_admission_policy_and_binding_on_by_default(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["default"]
    policy = one(docs, "ValidatingAdmissionPolicy", POLICY)
    shipped = yaml.safe_load((ROOT / "deploy" / "policies" / "secret-references.yaml").read_text())
    assert policy["spec"] == shipped["spec"]
    binding = one(docs, "ValidatingAdmissionPolicyBinding", POLICY)
    assert binding["spec"] == {"policyName": POLICY, "validationActions": ["Deny"]}
    assert not find(rendered["no-policies"], "ValidatingAdmissionPolicy")
    assert not find(rendered["no-policies"], "ValidatingAdmissionPolicyBinding")


def test_admission_policy_can_run_as_a_trial() -> None:
    docs = objects(render({"admissionPolicy": {"validationActions": ["Warn", "Audit"]}}))
    assert one(docs, "ValidatingAdmissionPolicyBinding", POLICY)["spec"]["validationActions"] == ["Warn", "Audit"]


def test_network_policy_admits_the_namespace_by_default_and_leaves_egress_open(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    policy = one(rendered["default"], "NetworkPolicy", PROXY)
    assert policy["metadata"]["namespace"] == NAMESPACE
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # the kube-apiserver and the providers stay reachable
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "proxy"
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {}}]}]
    chosen = one(rendered["network-from"], "NetworkPolicy", PROXY)
    assert chosen["spec"]["ingress"][0] == {"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}
    assert not find(rendered["no-policies"], "NetworkPolicy") and not find(rendered["sidecar"], "NetworkPolicy")


def test_network_policy_with_no_peer_admits_nobody() -> None:
    docs = objects(render({"networkPolicy": {"allowSameNamespace": False}}))
    assert one(docs, "NetworkPolicy", PROXY)["spec"]["ingress"] == []


def test_network_policy_admits_scrapers_to_the_metrics_port_alone() -> None:
    scrapers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    docs = objects(render({"proxy": {"metricsPort": 9090}, "networkPolicy": {"metricsFrom": scrapers}}))
    policy = one(docs, "NetworkPolicy", PROXY)
    kubernetes_validate.validate(policy, KUBE_VERSION, strict=True)
    ingress = policy["spec"]["ingress"]
    assert ingress == [{"from": [{"podSelector": {}}]},
                       {"from": scrapers, "ports": [{"port": "metrics", "protocol": "TCP"}]}]  # fmt: skip
    without_port = objects(render({"networkPolicy": {"metricsFrom": scrapers}}))
    assert one(without_port, "NetworkPolicy", PROXY)["spec"]["ingress"] == [{"from": [{"podSelector": {}}]}]
