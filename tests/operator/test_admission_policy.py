"""deploy/policies/: the ValidatingAdmissionPolicy's CEL, evaluated with cel-python against a stub authorizer.

The harness is the API server's admission step, cut down to what the shipped policy uses: matchConditions, then
``variables`` in order, then each validation and its messageExpression. The stub authorizer answers the
``authorizer.group(g).resource(r).namespace(ns).name(n).check(verb).allowed()`` chain from a set of grants, and
records what was asked. ``join`` is the Kubernetes strings extension, which cel-python lacks.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from celpy import celtypes

kubernetes_validate = pytest.importorskip("kubernetes_validate")

POLICIES = Path(__file__).resolve().parents[2] / "deploy" / "policies"
NS = "team-a"


def _documents() -> dict[str, dict[str, Any]]:
    docs = [yaml.safe_load(p.read_text()) for p in sorted(POLICIES.glob("*.yaml"))]
    return {d["kind"]: d for d in docs}


@dataclass
class StubAuthorizer:
    """Allows exactly ``grants``: (group, resource, namespace, name, verb) tuples."""

    grants: set[tuple[str, str, str, str, str]]
    asked: list[tuple[str, ...]] = field(default_factory=list)

    def functions(self) -> dict[str, Any]:
        def step(key: str) -> Any:
            def add(request: celtypes.MapType, value: celtypes.StringType) -> celtypes.MapType:
                return celtypes.MapType({**request, celtypes.StringType(key): value})

            return add

        def check(request: celtypes.MapType, verb: celtypes.StringType) -> celtypes.BoolType:
            asked = (*(str(request.get(celtypes.StringType(k), "")) for k in ("g", "r", "ns", "n")), str(verb))
            self.asked.append(asked)
            return celtypes.BoolType(asked in self.grants)

        def join(items: celtypes.ListType, separator: celtypes.StringType) -> celtypes.StringType:
            return celtypes.StringType(str(separator).join(str(i) for i in items))

        return {"group": step("g"), "resource": step("r"), "namespace": step("ns"), "name": step("n"),
                "check": check, "allowed": lambda decision: decision, "join": join}  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    matched: bool
    allowed: bool
    messages: tuple[str, ...]


def admit(obj: Mapping[str, Any], authorizer: StubAuthorizer, old: Mapping[str, Any] | None = None) -> Verdict:
    """What the API server decides for a request by ``authorizer``'s user under the shipped policy."""
    policy = _documents()["ValidatingAdmissionPolicy"]["spec"]
    env = celpy.Environment()
    functions = authorizer.functions()
    kind = {"group": "cliproxy.io", "version": "v1alpha1", "kind": obj["kind"]}
    request = {"operation": "UPDATE" if old else "CREATE", "namespace": NS, "kind": kind}
    activation: dict[str, Any] = {
        "object": celpy.json_to_cel(dict(obj)), "oldObject": celpy.json_to_cel(dict(old)) if old else None,
        "request": celpy.json_to_cel(request), "authorizer": celtypes.MapType({}),
    }  # fmt: skip

    def evaluate(expression: str) -> Any:
        result = env.program(env.compile(expression), functions=functions).evaluate(activation)
        if isinstance(result, Exception):
            raise result
        return result

    if not all(evaluate(c["expression"]) for c in policy.get("matchConditions", [])):
        return Verdict(False, True, ())
    variables: dict[str, Any] = {}
    for variable in policy.get("variables", []):
        activation["variables"] = celtypes.MapType({celtypes.StringType(k): v for k, v in variables.items()})
        variables[variable["name"]] = evaluate(variable["expression"])
    activation["variables"] = celtypes.MapType({celtypes.StringType(k): v for k, v in variables.items()})
    messages = tuple(
        str(evaluate(v["messageExpression"])) if "messageExpression" in v else v.get("message", "")
        for v in policy["validations"]
        if not evaluate(v["expression"])
    )
    return Verdict(True, not messages, messages)


def reader(*secrets: str) -> StubAuthorizer:
    return StubAuthorizer({("", "secrets", NS, s, "get") for s in secrets})


def credential(*secrets: str, token: str | None = None, **spec: Any) -> dict[str, Any]:
    keys = [{"secretKeyRef": {"name": s, "key": "k"}} for s in secrets]
    body: dict[str, Any] = {"provider": "openai-compatibility", "baseURL": "https://x.example/v1", **spec}
    if keys:
        body["apiKeys"] = keys
    if token:
        body = {"provider": "kiro", "tokenSecretRef": {"name": token, "key": "kiro-auth-token.json"}, **spec}
    return {"apiVersion": "cliproxy.io/v1alpha1", "kind": "ProviderCredential",
            "metadata": {"name": "c", "namespace": NS}, "spec": body}  # fmt: skip


def test_the_shipped_objects_are_valid_and_bound() -> None:
    docs = _documents()
    for doc in docs.values():
        assert kubernetes_validate.validate(doc, "1.30", strict=True) == "1.30"
    policy, binding = docs["ValidatingAdmissionPolicy"], docs["ValidatingAdmissionPolicyBinding"]
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert (rule["apiGroups"], rule["resources"], rule["operations"]) == (
        ["cliproxy.io"], ["providercredentials", "clientkeys"], ["CREATE", "UPDATE"])  # fmt: skip


def test_a_user_who_may_read_every_referenced_secret_is_admitted() -> None:
    authorizer = reader("team-keys", "more-keys")
    assert admit(credential("team-keys", "more-keys"), authorizer) == Verdict(True, True, ())
    assert sorted(authorizer.asked) == [
        ("", "secrets", NS, "more-keys", "get"),
        ("", "secrets", NS, "team-keys", "get"),
    ]


def test_a_user_denied_one_secret_is_refused_and_told_which() -> None:
    verdict = admit(credential("team-keys", "payments-prod"), reader("team-keys"))
    assert verdict.matched and not verdict.allowed
    (message,) = verdict.messages
    assert "payments-prod" in message and "team-keys" not in message and NS in message


def test_a_token_secret_reference_is_checked_too() -> None:
    assert admit(credential(token="kiro-login"), reader("kiro-login")).allowed
    refused = admit(credential(token="someone-elses-login", refreshURL="https://collector.example"), reader())
    assert not refused.allowed and "someone-elses-login" in refused.messages[0]


def test_changing_the_spec_is_checked_like_creating() -> None:
    old = credential("payments-prod")  # created by someone who may read it
    redirected = copy.deepcopy(old)
    redirected["spec"]["baseURL"] = "https://collector.evil.example/v1"
    verdict = admit(redirected, reader(), old=old)
    assert verdict.matched and not verdict.allowed


def test_metadata_only_updates_are_not_matched() -> None:
    old = credential("payments-prod")
    annotated = copy.deepcopy(old)
    annotated["metadata"]["annotations"] = {"cliproxy.io/last-handled-configuration": "{}"}
    assert admit(annotated, reader(), old=old) == Verdict(False, True, ())


def test_a_client_key_secret_reference_is_checked_too() -> None:
    """A ClientKey naming another team's Secret would make that Secret's value a key of the author's gateway."""
    client_key = {"apiVersion": "cliproxy.io/v1alpha1", "kind": "ClientKey", "metadata": {"name": "k", "namespace": NS},
                  "spec": {"gateway": "default", "secretRef": {"name": "payments-prod", "key": "api-key"}}}  # fmt: skip
    assert admit(client_key, reader("payments-prod")).allowed
    refused = admit(client_key, reader())
    assert not refused.allowed and "payments-prod" in refused.messages[0] and "a ClientKey may" in refused.messages[0]
    generated = {**client_key, "spec": {"gateway": "default"}}  # no reference: the operator's own Secret
    assert admit(generated, reader()).allowed
