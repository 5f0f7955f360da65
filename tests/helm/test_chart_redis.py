"""The chart's Redis choices: none (each replica counts alone), an existing one (redis.url), or a bundled one."""

from __future__ import annotations

from typing import Any

import pytest

from .chart import NAMESPACE, OPERATOR, PROXY, RELEASE, container, find, objects, one, render

REDIS = f"{RELEASE}-cliproxy-redis"


def env_of(docs: list[dict[str, Any]], deployment: str, name: str) -> dict[str, Any]:
    return {e["name"]: e for e in container(one(docs, "Deployment", deployment), name).get("env") or []}


def notes(values: dict[str, Any]) -> str:
    return next(text for path, text in render(values).items() if path.endswith("NOTES.txt"))


def test_without_redis_nothing_is_shared_and_the_notes_say_what_that_means() -> None:
    docs = objects(render({}))
    assert not find(docs, "Deployment", REDIS) and not find(docs, "Service", REDIS)
    assert "CLIPROXY_REDIS_URL" not in env_of(docs, PROXY, "proxy")
    assert "CLIPROXY_REDIS_URL" not in env_of(docs, OPERATOR, "operator")
    text = notes({})
    assert "each proxy replica counts alone" in text and "up to 10x here" in text


def test_an_existing_redis_reaches_proxy_and_operator_with_its_password_from_a_secret() -> None:
    values = {"redis": {"url": "rediss://redis.infra:6380/1", "existingSecret": "redis-auth"}}
    docs = objects(render(values))
    assert not find(docs, "Deployment", REDIS)
    for deployment, name in ((PROXY, "proxy"), (OPERATOR, "operator")):
        env = env_of(docs, deployment, name)
        assert env["CLIPROXY_REDIS_URL"] == {"name": "CLIPROXY_REDIS_URL", "value": "rediss://redis.infra:6380/1"}
        assert env["CLIPROXY_REDIS_PASSWORD"]["valueFrom"] == {
            "secretKeyRef": {"name": "redis-auth", "key": "password"}}  # fmt: skip
    assert "every replica enforces\n  one limit" in notes(values) and "redis-auth" in notes(values)


def test_a_cluster_url_is_flagged_to_proxy_and_operator() -> None:
    docs = objects(render({"redis": {"url": "redis://redis-cluster.infra:6379", "cluster": True}}))
    for deployment, name in ((PROXY, "proxy"), (OPERATOR, "operator")):
        assert env_of(docs, deployment, name)["CLIPROXY_REDIS_CLUSTER"] == {"name": "CLIPROXY_REDIS_CLUSTER",
                                                                            "value": "true"}  # fmt: skip
    bundled = objects(render({"redis": {"bundled": {"enabled": True}, "cluster": True}}))  # one node: never a cluster
    assert "CLIPROXY_REDIS_CLUSTER" not in env_of(bundled, PROXY, "proxy")
    helm = pytest.importorskip("helm_python")
    with pytest.raises(helm.HelmError, match=r"redis\.cluster takes a redis:// or rediss:// url"):
        render({"redis": {"url": "redis+sentinel://s1:26379/mymaster", "cluster": True}})


def test_a_password_in_the_url_is_refused() -> None:
    """It would sit in the pod spec for anyone who may read Deployments: redis.existingSecret is the way."""
    helm = pytest.importorskip("helm_python")
    with pytest.raises(helm.HelmValuesError, match="/redis/url"):
        render({"redis": {"url": "redis://:hunter2@redis.infra:6379/0"}})


def test_the_bundled_redis_is_small_locked_down_and_forgets_on_restart() -> None:
    docs = objects(render({"redis": {"bundled": {"enabled": True}}}))
    url = f"redis://{REDIS}.{NAMESPACE}.svc:6379/0"
    assert env_of(docs, PROXY, "proxy")["CLIPROXY_REDIS_URL"]["value"] == url
    assert env_of(docs, OPERATOR, "operator")["CLIPROXY_REDIS_URL"]["value"] == url
    deployment = one(docs, "Deployment", REDIS)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    redis = container(deployment, "redis")
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert redis["securityContext"]["readOnlyRootFilesystem"] is True
    assert redis["resources"]["requests"] and redis["resources"]["limits"]["memory"]
    args = redis["args"]
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"  # persistence off
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v] and not find(docs, "PersistentVolumeClaim")
    service = one(docs, "Service", REDIS)
    assert service["spec"]["ports"][0]["port"] == 6379
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    policy = one(docs, "NetworkPolicy", REDIS)  # only this release's proxies and operator reach it
    peers = [
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in policy["spec"]["ingress"][0]["from"]
    ]
    assert sorted(peers) == ["operator", "proxy"]
    assert "a restart of its pod forgets the counters" in notes({"redis": {"bundled": {"enabled": True}}})


def test_an_existing_redis_wins_over_the_bundled_one() -> None:
    docs = objects(render({"redis": {"url": "redis://r:6379/0", "bundled": {"enabled": True}}}))
    assert not find(docs, "Deployment", REDIS)
    assert env_of(docs, PROXY, "proxy")["CLIPROXY_REDIS_URL"]["value"] == "redis://r:6379/0"
