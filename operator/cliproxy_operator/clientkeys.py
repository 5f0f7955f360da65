"""ClientKeys as pure functions: the resources and their keys in, each gateway's ``client-keys`` entries out.

A ClientKey's key comes from a Secret it references (under the same consent rules as a ProviderCredential's) or
from the Secret the operator generated for it. The proxy knows it as ``<namespace>.<name>``: names are unique
in a namespace, and the namespace keeps two teams' counters apart on a Redis that several namespaces share.
One key is one identity: a key already presented by an older ClientKey or a client-keys Secret is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cliproxy_proxy.contract import ConfigError, parse_config

from .render import Problem, Resource, SecretConsent
from .render import _name as name_of
from .render import _refused as refused
from .render import _resolve as resolve

KEY_PREFIX = "cpk-"  # a generated key says what it is (secret scanners, a leaked log line)
GENERATED_KEY = "api-key"  # the data key of a generated Secret
GENERATED_SUFFIX = ".client-key"  # a dot: never the name of a rendered object (cliproxy-<gateway>, no dots)
MICRO = 1_000_000  # the proxies count dollars as whole micro-dollars
ROTATE_ANNOTATION = "cliproxy.io/rotate"  # on a ClientKey: a new value asks for a new generated key
_LIMIT_KEYS = {"rpm": "rpm", "tpm": "tpm", "maxParallel": "max-parallel"}


@dataclass
class ClientKeyState:
    gateway: str
    client: str  # the proxy's name for it
    key_secret: str  # the Secret holding its key
    rendered: bool = False
    problems: list[Problem] = field(default_factory=list)  # a condition and a Warning Event
    notices: list[Problem] = field(default_factory=list)  # a condition only


@dataclass
class ClientKeyRendering:
    entries: dict[str, list[dict[str, Any]]]  # gateway -> its client-keys entries
    files: dict[str, dict[str, str]]  # gateway -> secret file -> key
    states: dict[str, ClientKeyState]


def client_name(namespace: str, name: str) -> str:
    return f"{namespace}.{name}" if namespace else name


def generated_secret_name(name: str) -> str:
    return f"{name}{GENERATED_SUFFIX}"


def key_file(name: str) -> str:
    return f"{name}.client-key"


def expired(resource: Resource, now: datetime) -> bool:
    """Whether its ``expires`` has passed (an unparsable one counts as passed: the proxy refuses it too)."""
    expires = resource.get("spec", {}).get("expires")
    if not expires:
        return False
    try:
        return datetime.fromisoformat(str(expires).replace("Z", "+00:00")) <= now
    except ValueError:
        return True


def _entry(namespace: str, resource: Resource, file: str) -> dict[str, Any]:
    """The ``client-keys`` entry of one ClientKey, in the proxy's config contract."""
    spec = resource.get("spec", {})
    entry: dict[str, Any] = {"name": client_name(namespace, name_of(resource)), "api-key-file": file}
    if spec.get("models"):
        entry["models"] = list(spec["models"])
    limit = {key: spec["rateLimit"][field] for field, key in _LIMIT_KEYS.items() if (spec.get("rateLimit") or {})
             .get(field) is not None}  # fmt: skip
    if limit:
        entry["rate-limit"] = limit
    if spec.get("budget"):
        entry["budget"] = {k: v for k, v in spec["budget"].items() if k in ("tokens", "usd", "per")}
    if spec.get("expires"):
        entry["expires"] = spec["expires"]
    return entry


def _invalid(entry: Mapping[str, Any]) -> Problem | None:
    """What the proxy would say of the entry alone: one ClientKey it cannot load must not hold back the rest."""
    try:
        parse_config({"client-keys": [entry]})
    except ConfigError as error:
        where, _, what = str(error).partition(": ")
        if where == "client-keys[0].name":  # a name past the CRD's rule (an API server before it, or none)
            return Problem("InvalidName", f"the proxy would know this key as {entry['name']!r}: {what}; "
                           "keep metadata.name to 63 characters")  # fmt: skip
        return Problem("InvalidSpec", str(error).replace("client-keys[0].", "spec "))
    return None


def render_client_keys(
    namespace: str,
    resources: list[Resource],
    secrets: Mapping[str, Mapping[str, str]],
    consent: SecretConsent,
    generated: Mapping[str, str | Problem],
    taken: Mapping[str, list[str]],
) -> ClientKeyRendering:
    """Each ClientKey's entry under its gateway, oldest first; ``generated`` holds the operator's keys by
    ClientKey name (or why there is none), ``taken`` the keys each gateway's client-keys Secrets already give."""
    result = ClientKeyRendering({}, {}, {})
    used = {gateway: set(keys) for gateway, keys in taken.items()}
    ordered = sorted(resources, key=lambda r: (str(r.get("metadata", {}).get("creationTimestamp") or ""), name_of(r)))
    for resource in ordered:
        name, spec = name_of(resource), resource.get("spec", {})
        gateway = str(spec.get("gateway") or "default")
        ref = spec.get("secretRef")
        state = result.states[name] = ClientKeyState(
            gateway, client_name(namespace, name), str(ref["name"]) if ref else generated_secret_name(name)
        )
        key: str | Problem | None
        if ref:
            key = refused("secretRef", ref, spec, consent) or resolve(ref, secrets, "secretRef")
        else:
            key = generated.get(name, Problem("KeyPending", "the generated key Secret is not written yet"))
        if isinstance(key, Problem):
            state.problems.append(key)
            continue
        if key in used.setdefault(gateway, set()):
            state.problems.append(Problem("KeyInUse", f"gateway {gateway!r} already has this key (an older "
                                          "ClientKey's or a client-keys Secret's): one key, one identity"))  # fmt: skip
            continue
        file = key_file(name)
        entry = _entry(namespace, resource, file)
        problem = _invalid(entry)
        if problem is not None:
            state.problems.append(problem)
            continue
        used[gateway].add(key)
        result.entries.setdefault(gateway, []).append(entry)
        result.files.setdefault(gateway, {})[file] = key
        state.rendered = True
    for entries in result.entries.values():
        entries.sort(key=lambda e: str(e["name"]))
    return result


def budget_condition(resource: Resource, usage: Any, shared: bool) -> tuple[bool, str, str]:
    """BudgetExhausted: whether the period's tokens are spent, as far as the shared counters tell."""
    budget = resource.get("spec", {}).get("budget") or {}
    if not budget:
        return False, "NoBudget", "no budget is set"
    if not shared:
        alone = "the operator has no redis.url: each proxy replica counts this budget alone (N replicas: up to N "
        return False, "UsageNotShared", alone + "times it), and usage is not reported"
    if usage is None:
        return False, "UsageNotRead", "the period's usage has not been read from Redis yet"
    per = budget.get("per") or "month"
    if budget.get("tokens") and usage.tokens >= budget["tokens"]:
        return True, "TokenBudgetSpent", f"the budget of {budget['tokens']} tokens per {per} is spent"
    if budget.get("usd") and usage.micro_usd >= round(budget["usd"] * MICRO):
        return True, "UsdBudgetSpent", f"the budget of {budget['usd']} USD per {per} is spent"
    return False, "WithinBudget", f"within the budget for {usage.period}"


def status_of(
    resource: Resource, state: ClientKeyState, now: datetime, usage: Any, shared: bool
) -> tuple[list[Problem], dict[str, Any], list[tuple[str, bool, str, str]]]:
    """The problems worth an Event, the status fields and the conditions (Ready, Expired, BudgetExhausted)."""
    problems = list(state.problems)
    if expired(resource, now):
        gone = Problem("Expired", f"the key expired at {resource['spec']['expires']}; the proxy refuses it")
        problems.append(gone)
        ready: tuple[bool, str, str] = (False, gone.reason, gone.message)
        expiry = (True, gone.reason, gone.message)
    else:
        first = (state.problems + state.notices)[:1]
        ready = (False, first[0].reason, "; ".join(p.message for p in state.problems + state.notices)) if first \
            else (state.rendered, "Rendered", f"served as {state.client!r} by gateway {state.gateway!r}")  # fmt: skip
        expiry = (False, "NotExpired", f"valid until {resource['spec']['expires']}" if resource.get("spec", {})
                  .get("expires") else "never expires")  # fmt: skip
    spent = budget_condition(resource, usage, shared)
    if spent[0]:
        problems.append(Problem("BudgetExhausted", spent[2]))
    fields: dict[str, Any] = {"keySecretName": state.key_secret, "clientName": state.client,
                              "models": ",".join(resource.get("spec", {}).get("models") or ["*"])}  # fmt: skip
    if usage is not None:
        fields["usage"] = {"period": usage.period, "tokens": usage.tokens, "spendUSD": usage.usd}
    return problems, fields, [("Ready", *ready), ("Expired", *expiry), ("BudgetExhausted", *spent)]
