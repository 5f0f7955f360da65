"""The Helm chart in deploy/helm/cliproxy: lint, render its variants offline, and validate what comes out.

helm-python-sdk embeds the real Helm Go library (no helm binary, no cluster); kubernetes-validate checks every
rendered object against the bundled Kubernetes OpenAPI schemas. KEDA and Prometheus Operator kinds have no
bundled schema, so they are checked structurally.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from .chart import (
    CHART,
    CRD_KINDS,
    KUBE_VERSION,
    NAMESPACE,
    OPERATOR,
    PROXY,
    RELEASE,
    ROOT,
    STANDARD_LABELS,
    VARIANTS,
    container,
    find,
    helm,
    kubernetes_validate,
    objects,
    one,
    rbac_rules,
    render,
)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: objects(render(values)) for name, values in VARIANTS.items()}


# --- lint and schema -----------------------------------------------------------------------------------------


def test_lint_strict_is_clean() -> None:
    report = helm.lint(str(CHART), strict=True, kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_lint_variants(name: str) -> None:
    report = helm.lint(str(CHART), VARIANTS[name], strict=True)
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"proxy": {"port": "8317"}}, "/proxy/port"),
        ({"proxy": {"enabled": "yes"}}, "/proxy/enabled"),
        ({"proxy": {"kubeSource": {"enabled": "yes"}}}, "/proxy/kubeSource/enabled"),
        ({"proxy": {"kubeSource": {"enabled": 1}}}, "/proxy/kubeSource/enabled"),
        ({"proxy": {"kubeSource": True}}, "/proxy/kubeSource"),
        ({"sidecar": {"rbac": {"serviceAccountName": "My_App"}}}, "/sidecar/rbac/serviceAccountName"),
        ({"autoscaling": {"maxReplicas": "ten"}}, "/autoscaling/maxReplicas"),
        ({"operator": {"watchNamespaces": "team-a"}}, "/operator/watchNamespaces"),
        ({"proxy": {"gateway": "Not_A_DNS_Name"}}, "/proxy/gateway"),
        ({"autoscaling": {"keda": {"providers": [{"name": "openai"}]}}}, "/autoscaling/keda/providers/0"),
        ({"unknownTopLevelKey": True}, "unknownTopLevelKey"),
    ],
)
def test_schema_rejects_wrong_values(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=where):
        render(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"proxy": {"terminationGracePeriodSeconds": 30}}, "terminationGracePeriodSeconds must exceed"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}, "maxReplicas must be >= "),
        ({"autoscaling": {"minReplicas": 0}}, "scale to zero needs KEDA"),
        ({"autoscaling": {"hpa": {"targetCPUUtilizationPercentage": 0}}}, "the HPA needs a metric"),
    ],
)
def test_inconsistent_values_fail_rendering(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def test_keda_may_scale_to_zero() -> None:
    docs = objects(render({"autoscaling": {"minReplicas": 0, "keda": {"enabled": True}}}))
    assert one(docs, "ScaledObject", PROXY)["spec"]["minReplicaCount"] == 0


def test_values_yaml_is_documented_and_valid() -> None:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    lines = text.splitlines()

    def documented(i: int) -> bool:
        """A `# --` comment right above line i or above one of its parent keys."""
        indent = len(lines[i]) - len(lines[i].lstrip())
        while True:
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("#"):
                if lines[j].strip().startswith("# --"):
                    return True
                j -= 1
            if indent == 0:
                return False
            i = max(j for j in range(i) if lines[j].strip() and len(lines[j]) - len(lines[j].lstrip()) < indent)
            indent = len(lines[i]) - len(lines[i].lstrip())

    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or not stripped.split(":", 1)[1].strip():
            continue  # comments, list items and parent keys; every key with a value must be documented
        assert documented(i), f"values.yaml line {i + 1} lacks a '# --' comment: {line!r}"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "cliproxy"
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(values, schema)


# --- copies kept in step ---------------------------------------------------------------------------------------


def test_crds_are_identical_copies() -> None:
    source = sorted(p.name for p in (ROOT / "deploy" / "crds").glob("*.yaml"))
    copies = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert source and source == copies
    for name in source:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "deploy" / "crds" / name).read_bytes(), name
        kubernetes_validate.validate(yaml.safe_load((CHART / "crds" / name).read_text()), KUBE_VERSION, strict=True)


def test_rbac_file_is_identical_copy() -> None:
    copy = CHART / "files" / "operator-rbac.yaml"
    assert copy.read_bytes() == (ROOT / "deploy" / "rbac" / "operator.yaml").read_bytes()


def test_cluster_role_rules_match_deploy_rbac(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["default"]
    role = one(docs, "ClusterRole", OPERATOR)
    assert role["rules"] == rbac_rules()
    binding = one(docs, "ClusterRoleBinding", OPERATOR)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}]
    assert not find(docs, "Role", OPERATOR) and not find(docs, "RoleBinding", OPERATOR)


def test_namespaced_operator_uses_roles(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["namespaced"]
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    roles = find(docs, "Role", OPERATOR)
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    cluster_scoped = {"namespaces", "customresourcedefinitions", "clusterkopfpeerings"}
    kept = [{**rule, "resources": [x for x in rule["resources"] if x not in cluster_scoped]} for rule in rbac_rules()]
    assert all(role["rules"] == [rule for rule in kept if rule["resources"]] for role in roles)  # nothing inert
    assert not {x for role in roles for rule in role["rules"] for x in rule["resources"]} & cluster_scoped
    bindings = find(docs, "RoleBinding", OPERATOR)
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(b["subjects"][0]["namespace"] == NAMESPACE for b in bindings)
    args = container(one(docs, "Deployment", OPERATOR), "operator")["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args


# --- every rendered object is valid ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_rendered_objects_validate(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered[name]
    assert docs
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        labels = doc["metadata"].get("labels", {})
        for label in STANDARD_LABELS:
            assert label in labels, f"{where} lacks label {label}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        if doc["apiVersion"].split("/")[0] in CRD_KINDS:
            check_structurally(doc)
        else:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def check_structurally(doc: dict[str, Any]) -> None:
    if doc["kind"] == "ScaledObject":
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        spec = doc["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": PROXY}
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert down["stabilizationWindowSeconds"] >= 300
        assert spec["triggers"]
        for trigger in spec["triggers"]:
            assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
            meta = trigger["metadata"]
            assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values must be strings"
            assert meta["serverAddress"].startswith("http")
            assert meta["query"].startswith("sum(cliproxy_in_flight_requests{")
            assert f'namespace="{NAMESPACE}"' in meta["query"] and f'pod=~"{PROXY}-.*"' in meta["query"]
            assert float(meta["threshold"]) > 0
    elif doc["kind"] == "ServiceMonitor":
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        spec = doc["spec"]
        assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == "proxy"
        assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        (endpoint,) = [dict(e) for e in spec["endpoints"]]
        assert endpoint.pop("port") in ("http", "metrics")  # metrics: proxy.metricsPort (its own test)
        assert endpoint == {"path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    else:
        raise AssertionError(f"unexpected custom kind {doc['apiVersion']} {doc['kind']}")


# --- proxy properties ------------------------------------------------------------------------------------------


def test_proxy_deployment(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = one(rendered["default"], "Deployment", PROXY)
    pod = deployment["spec"]["template"]["spec"]
    proxy = container(deployment, "proxy")
    # A first install starts at the autoscaler's minimum (an upgrade keeps the live count, through `lookup`).
    assert deployment["spec"]["replicas"] == 2
    assert proxy["command"] == ["cliproxy-proxy"]
    assert proxy["args"][:4] == [
        "--config=/etc/cliproxy/config",
        "--secrets-dir=/etc/cliproxy/secrets",
        "--host=0.0.0.0",
        "--port=8317",
    ]
    assert proxy["ports"] == [{"name": "http", "containerPort": 8317, "protocol": "TCP"}]
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # Readiness and liveness wait for the startup probe, whose first check comes after the start-up time.
    startup = proxy["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": "http"} and startup["initialDelaySeconds"] >= 1
    assert startup["initialDelaySeconds"] + startup["periodSeconds"] * startup["failureThreshold"] >= 30
    # Graceful shutdown: preStop sleep, then the drain, all inside the grace period.
    sleep = proxy["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep > 0 and pod["terminationGracePeriodSeconds"] > sleep + 60
    assert proxy["resources"]["requests"] and proxy["resources"]["limits"]
    # Security.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = proxy["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is True, "the API source (kubeSource, on by default) needs the token"
    # Volumes: the operator-rendered ConfigMap and Secret, optional, mounted as whole directories.
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    assert set(mounts) >= {"/etc/cliproxy/config", "/etc/cliproxy/secrets"}
    assert all("subPath" not in m and "subPathExpr" not in m for m in proxy["volumeMounts"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    config = volumes[mounts["/etc/cliproxy/config"]["name"]]
    secrets = volumes[mounts["/etc/cliproxy/secrets"]["name"]]
    assert config["configMap"] == {"name": "cliproxy-default", "optional": True}
    assert "items" not in config["configMap"] and "items" not in secrets["secret"]
    assert secrets["secret"]["secretName"] == "cliproxy-default" and secrets["secret"]["optional"] is True
    assert mounts["/etc/cliproxy/config"]["readOnly"] and mounts["/etc/cliproxy/secrets"]["readOnly"]
    # Spread, scrape annotations.
    spread = pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert all(c["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"] for c in spread)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8317"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_proxy_gateway_value(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pod = one(rendered["everything"], "Deployment", PROXY)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "cliproxy-team-a"
    assert volumes["secrets"]["secret"]["secretName"] == "cliproxy-team-a"
    assert one(rendered["everything"], "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_proxy_service_and_pdb(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["default"]
    service = one(docs, "Service", PROXY)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8317, "targetPort": "http", "protocol": "TCP"}]
    selector = one(docs, "Deployment", PROXY)["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector
    pdb = one(docs, "PodDisruptionBudget", PROXY)
    assert pdb["spec"]["selector"]["matchLabels"] == selector and pdb["spec"]["minAvailable"] == 1


def test_operator_deployment(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = one(rendered["default"], "Deployment", OPERATOR)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    operator = container(deployment, "operator")
    assert operator["command"] == ["cliproxy-operator"]
    assert "--all-namespaces" in operator["args"] and "--log-format=json" in operator["args"]
    assert not any(a.startswith("--peering") for a in operator["args"])
    assert operator["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == OPERATOR
    peering = container(one(rendered["peering"], "Deployment", OPERATOR), "operator")["args"]
    assert "--peering=cliproxy" in peering and "--priority=5" in peering
    # The token refresher's cadence reaches the operator as the environment cliproxy_operator.tokens reads.
    from cliproxy_operator import tokens

    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in operator["env"]}
    # The pod's name is the operator's kopf identity: the image's uid has no passwd entry to name it.
    assert env.pop("POD_NAME") == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env == {"CLIPROXY_TOKEN_CHECK_SECONDS": "30", "CLIPROXY_TOKEN_REFRESH_MARGIN_SECONDS": "300"}
    assert (float(env["CLIPROXY_TOKEN_CHECK_SECONDS"]), float(env["CLIPROXY_TOKEN_REFRESH_MARGIN_SECONDS"])) == (
        tokens.CHECK_SECONDS, tokens.REFRESH_MARGIN)  # fmt: skip


# --- autoscaling, monitoring, sidecar ---------------------------------------------------------------------------


def test_default_hpa_on_cpu(rendered: dict[str, list[dict[str, Any]]]) -> None:
    hpa = one(rendered["default"], "HorizontalPodAutoscaler", PROXY)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == PROXY
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert not find(rendered["default"], "ScaledObject")


def test_hpa_in_flight_metric(rendered: dict[str, list[dict[str, Any]]]) -> None:
    hpa = one(rendered["hpa-inflight"], "HorizontalPodAutoscaler", PROXY)
    pods = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "cliproxy_in_flight_requests"},
                "target": {"type": "AverageValue", "averageValue": "32"},
            },
        }
    ]


def test_keda_replaces_hpa(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["keda"]
    assert not find(docs, "HorizontalPodAutoscaler")
    scaled = one(docs, "ScaledObject", PROXY)
    queries = [t["metadata"]["query"] for t in scaled["spec"]["triggers"]]
    assert len(queries) == 2 and 'provider="openai"' in queries[1]
    assert one(docs, "Deployment", PROXY)["spec"]["replicas"] == scaled["spec"]["minReplicaCount"]


def test_no_autoscaling_sets_replicas(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["no-autoscaling"]
    assert not find(docs, "HorizontalPodAutoscaler") and not find(docs, "ScaledObject")
    assert one(docs, "Deployment", PROXY)["spec"]["replicas"] == 2


def test_service_monitor(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert not find(rendered["default"], "ServiceMonitor")
    monitor = one(rendered["servicemonitor"], "ServiceMonitor", PROXY)
    assert monitor["metadata"]["labels"]["release"] == "kps"


def test_metrics_port_moves_the_scrape_off_the_api_port(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["metrics-port"]
    deployment = one(docs, "Deployment", PROXY)["spec"]["template"]
    container = deployment["spec"]["containers"][0]
    assert "--metrics-port=9464" in container["args"]
    assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in container["ports"]
    assert deployment["metadata"]["annotations"]["prometheus.io/port"] == "9464"
    assert {"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"} in one(docs, "Service", PROXY)[
        "spec"
    ]["ports"]
    assert one(docs, "ServiceMonitor", PROXY)["spec"]["endpoints"][0]["port"] == "metrics"
    default = one(rendered["default"], "Deployment", PROXY)["spec"]["template"]
    assert not any(a.startswith("--metrics-port") for a in default["spec"]["containers"][0]["args"])
    assert default["metadata"]["annotations"]["prometheus.io/port"] == "8317"


def test_dashboard(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert not find(rendered["default"], "ConfigMap")
    configmap = one(rendered["dashboard"], "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["cliproxy.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "cliproxy_requests_total",
        "cliproxy_errors_total",
        "cliproxy_request_duration_seconds_bucket",
        "cliproxy_tokens_total",
        "cliproxy_in_flight_requests",
        "cliproxy_credential_cooldowns_total",
    ):
        assert metric in exprs, metric
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_sidecar_mode_skips_proxy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["sidecar"]
    assert [d["metadata"]["name"] for d in find(docs, "Deployment")] == [OPERATOR]
    for kind in ("Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ScaledObject", "ServiceMonitor"):
        assert not find(docs, kind), kind
    assert "sidecar" in render({"proxy": {"enabled": False}})["cliproxy/templates/NOTES.txt"].lower()
    readme = (CHART / "README.md").read_text()
    assert "proxy.enabled=false" in readme and "/etc/cliproxy/secrets" in readme


def test_images_per_component() -> None:
    values = {"image": {"proxy": {"repository": "p", "tag": "e2e"}, "operator": {"repository": "o", "tag": "e2e"}}}
    docs = objects(render(values))
    assert container(one(docs, "Deployment", PROXY), "proxy")["image"] == "p:e2e"
    assert container(one(docs, "Deployment", OPERATOR), "operator")["image"] == "o:e2e"
    default = objects(render())
    assert container(one(default, "Deployment", PROXY), "proxy")["image"] == "cliproxy-proxy:0.1.0"
    assert container(one(default, "Deployment", OPERATOR), "operator")["image"] == "cliproxy-operator:0.1.0"


def test_image_names_live_in_one_file_the_makefile_and_e2e_read() -> None:
    """images.env names the images for the chart, `make images` and deploy/e2e/kind-e2e.sh alike."""
    env = dict(line.split("=", 1) for line in (CHART / "images.env").read_text().splitlines() if "=" in line and
               not line.startswith("#"))  # fmt: skip
    assert env == {"PROXY_IMAGE": "cliproxy-proxy", "OPERATOR_IMAGE": "cliproxy-operator", "IMAGE_TAG": "0.1.0"}
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert env["IMAGE_TAG"] == chart["appVersion"]
    makefile = (ROOT / "Makefile").read_text()
    assert "include deploy/helm/cliproxy/images.env" in makefile
    assert "$(PROXY_IMAGE):$(IMAGE_TAG)" in makefile and "$(OPERATOR_IMAGE):$(IMAGE_TAG)" in makefile
    e2e = (ROOT / "deploy" / "e2e" / "kind-e2e.sh").read_text()
    assert 'source "$CHART/images.env"' in e2e
    assert "PROXY_IMAGE=cliproxy-proxy" not in e2e and "OPERATOR_IMAGE=cliproxy-operator" not in e2e
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["proxy"] == values["image"]["operator"] == {"repository": "", "tag": ""}


def test_notes_say_how_to_get_the_images_and_what_autoscaling_needs() -> None:
    notes = render()["cliproxy/templates/NOTES.txt"]
    assert "make images" in notes and "make kind-load" in notes and "cliproxy-proxy:0.1.0" in notes
    assert "metrics-server" in notes and "FailedGetResourceMetric" in notes
    pushed = {"image": {"proxy": {"repository": "reg.io/p"}, "operator": {"repository": "reg.io/o"}}}
    assert "make images" not in render(pushed)["cliproxy/templates/NOTES.txt"]
    keda = render(VARIANTS["keda"])["cliproxy/templates/NOTES.txt"]
    assert "needs KEDA installed" in keda and "metrics-server" not in keda
    adapter = render({"autoscaling": {"hpa": {"targetCPUUtilizationPercentage": 0, "inFlight": {"enabled": True}}}})
    assert "custom-metrics adapter" in adapter["cliproxy/templates/NOTES.txt"]
    assert "Autoscaling" not in render(VARIANTS["no-autoscaling"])["cliproxy/templates/NOTES.txt"]


def test_notes_for_namespaced_operator() -> None:
    notes = render(VARIANTS["namespaced"])["cliproxy/templates/NOTES.txt"]
    assert "watches namespaces team-a, team-b" in notes
    assert f"WARNING: the operator does not watch {NAMESPACE}" in notes
    notes = render({"operator": {"namespaced": True}})["cliproxy/templates/NOTES.txt"]
    assert "WARNING: the operator does not watch" not in notes


def test_notes_tell_how_to_reach_the_proxy() -> None:
    notes = render()["cliproxy/templates/NOTES.txt"]
    assert f"http://{PROXY}.{NAMESPACE}.svc:8317/v1" in notes
    assert "port-forward" in notes and "/v1/models" in notes


def test_sidecar_snippet_in_readme_is_valid() -> None:
    readme = (CHART / "README.md").read_text()
    snippet = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app"}, **yaml.safe_load(snippet)}
    pod["spec"]["containers"][0] = {"name": "app", "image": "app:1"}
    kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)


# --- the proxy's Kubernetes API source (proxy.kubeSource) and its least-privilege Role ---------------------------

READ_VERBS = {"get", "list", "watch"}


def proxy_rules(name: str) -> list[dict[str, Any]]:
    return [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [name], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [name], "verbs": ["get", "list", "watch"]},
    ]


def proxy_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment", PROXY)["spec"]["template"]["spec"]


def test_kube_source_on_by_default(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["default"]
    pod = proxy_pod(docs)
    volumes = {v["name"]: v for v in pod["volumes"]}
    configmap, secret = volumes["config"]["configMap"]["name"], volumes["secrets"]["secret"]["secretName"]
    assert configmap == secret == "cliproxy-default"
    args = container(one(docs, "Deployment", PROXY), "proxy")["args"]
    assert "--kube-name=cliproxy-default" in args
    assert not any(a.startswith(("--kube-namespace", "--kube-api")) for a in args), "in-cluster defaults"
    assert pod["automountServiceAccountToken"] is True
    # The ServiceAccount keeps its own automount off: only the proxy pod opts in.
    account = one(docs, "ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    role = one(docs, "Role")
    assert role["metadata"] == {**role["metadata"], "name": PROXY, "namespace": NAMESPACE}
    assert role["metadata"]["labels"]["app.kubernetes.io/component"] == "proxy"
    assert role["rules"] == proxy_rules(configmap)
    for rule in role["rules"]:
        assert set(rule["verbs"]) == READ_VERBS and rule["resourceNames"] == [configmap]
    binding = one(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": PROXY}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE}
    ]
    notes = render()["cliproxy/templates/NOTES.txt"]
    assert "through the Kubernetes API (watch) within a second" in notes


def test_kube_source_disabled(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["no-kube-source"]
    assert not find(docs, "Role", PROXY) and not find(docs, "RoleBinding", PROXY)
    assert not find(docs, "Role") and not find(docs, "RoleBinding")
    pod = proxy_pod(docs)
    assert pod["automountServiceAccountToken"] is False
    assert not any(a.startswith("--kube-") for a in container(one(docs, "Deployment", PROXY), "proxy")["args"])
    assert one(docs, "ServiceAccount", pod["serviceAccountName"])["automountServiceAccountToken"] is False
    notes = render(VARIANTS["no-kube-source"])["cliproxy/templates/NOTES.txt"]
    assert "kubelet's volume sync, typically 1-2 minutes" in notes and "within a second" not in notes


def test_kube_source_follows_the_gateway(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["everything"]  # proxy.gateway=team-a
    assert "--kube-name=cliproxy-team-a" in container(one(docs, "Deployment", PROXY), "proxy")["args"]
    assert one(docs, "Role", PROXY)["rules"] == proxy_rules("cliproxy-team-a")


def test_kube_source_binds_a_named_existing_service_account(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["existing-sa"]
    assert not find(docs, "ServiceAccount", "shared-sa"), "create=false: the chart does not create it"
    assert proxy_pod(docs)["serviceAccountName"] == "shared-sa"
    subjects = one(docs, "RoleBinding", PROXY)["subjects"]
    assert subjects == [{"kind": "ServiceAccount", "name": "shared-sa", "namespace": NAMESPACE}]


def test_kube_source_never_binds_the_default_service_account() -> None:
    values = {"proxy": {"serviceAccount": {"create": False}}}
    docs = objects(render(values))
    assert proxy_pod(docs)["serviceAccountName"] == "default"
    assert not find(docs, "Role") and not find(docs, "RoleBinding")
    assert "WARNING: proxy.serviceAccount.create=false" in render(values)["cliproxy/templates/NOTES.txt"]


def test_sidecar_rbac_for_a_named_service_account(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert not find(rendered["sidecar"], "Role") and not find(rendered["sidecar"], "RoleBinding")
    docs = rendered["sidecar-rbac"]
    assert not find(docs, "Deployment", PROXY) and not find(docs, "ServiceAccount", PROXY)
    assert one(docs, "Role", PROXY)["rules"] == proxy_rules("cliproxy-team-a")
    binding = one(docs, "RoleBinding", PROXY)
    assert binding["roleRef"]["name"] == PROXY
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "my-app", "namespace": NAMESPACE}]
    notes = render(VARIANTS["sidecar-rbac"])["cliproxy/templates/NOTES.txt"]
    assert "ServiceAccount my-app may get/list/watch" in notes and "--kube-name=cliproxy-team-a" in notes
    # With the chart's proxy too, one Role serves both ServiceAccounts.
    both = objects(render({"sidecar": {"rbac": {"serviceAccountName": "my-app"}}}))
    assert [s["name"] for s in one(both, "RoleBinding", PROXY)["subjects"]] == [PROXY, "my-app"]


def test_readme_sidecar_role_matches_the_chart(rendered: dict[str, list[dict[str, Any]]]) -> None:
    readme = (CHART / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```yaml\n")[1:]]
    pod = yaml.safe_load(blocks[0])["spec"]
    sidecar = next(c for c in pod["containers"] if c["name"] == "cliproxy")
    assert "--kube-name=cliproxy-team-a" in sidecar["args"] and pod["automountServiceAccountToken"] is True
    rbac = [d for d in yaml.safe_load_all(blocks[1]) if d]
    assert [d["kind"] for d in rbac] == ["Role", "RoleBinding"]
    for doc in rbac:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    role, binding = rbac
    assert role["rules"] == one(rendered["sidecar-rbac"], "Role", PROXY)["rules"] == proxy_rules("cliproxy-team-a")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    assert "sidecar.rbac.serviceAccountName" in readme


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_no_role_grants_the_proxy_more_than_reading_its_own_objects(
    name: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """Whatever binds the proxy's (or the sidecar's) ServiceAccount may only read cliproxy-<gateway>."""
    docs = rendered[name]
    values = VARIANTS[name]
    gateway = values.get("proxy", {}).get("gateway", "default")
    own = f"cliproxy-{gateway}"
    accounts = {values.get("sidecar", {}).get("rbac", {}).get("serviceAccountName")}
    if find(docs, "Deployment", PROXY):
        accounts.add(proxy_pod(docs)["serviceAccountName"])
    accounts.discard(None)
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs if "rules" in d}
    for binding in find(docs, "RoleBinding") + find(docs, "ClusterRoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] in accounts for s in binding["subjects"]):
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], namespace, ref["name"])]
        assert ref["kind"] == "Role" and role["metadata"]["namespace"] == NAMESPACE, "namespaced only"
        for rule in role["rules"]:
            assert set(rule["verbs"]) <= READ_VERBS, f"{name}: write verbs {rule['verbs']}"
            assert rule["apiGroups"] == [""] and set(rule["resources"]) <= {"configmaps", "secrets"}
            assert rule.get("resourceNames") == [own], f"{name}: {rule} reaches beyond {own}"
            assert "nonResourceURLs" not in rule
