"""cliproxyapi++ keys this proxy accepts without acting on them, so a config written for it always loads.

Each key is taken out of the document before validation and reported once, with why (``cliproxy-proxy --check``
lists them, a load logs them). Keys of neither project are still refused, so a typo of a real key is caught.
An entry whose egress goes through a SOCKS proxy is not served rather than sent direct.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .catalog import KINDS

_UNUSED = "not used by cliproxy"
_KUBERNETES = "configured by the Kubernetes deployment instead"

#: Top-level keys, with why each is ignored.
TOP_LEVEL = {
    "auth-dir": "session blocks name their token-file instead", "debug": "use --log-level",
    "remote-management": "no management API", "usage-statistics-enabled": "use /metrics",
    "logging-to-file": "logs go to stderr", "logs-max-total-size-mb": "logs go to stderr",
    "error-logs-max-files": "logs go to stderr", "ws-auth": "no websocket routes",
    "quota-exceeded": "no Gemini CLI project switching", "passthrough-headers": "vendor headers always pass back",
    "nonstream-keepalive-interval": _UNUSED, "commercial-mode": _UNUSED, "pprof": _UNUSED,
    "incognito-browser": "no OAuth login flow", "save-cooldown-status": "cooldowns live in memory",
    "auth-auto-refresh-workers": "sessions refresh on their own schedule", "tls": _KUBERNETES,
    "redis-usage-queue-retention-seconds": "use /metrics", "transient-error-cooldown-seconds": "use cooldowns",
    "disable-claude-cloak-mode": "no cloaking", "claude-header-defaults": "no cloaking",
    "codex-header-defaults": "use the entry's headers", "codex": _UNUSED, "kiro-fingerprint": _UNUSED,
    "kiro-preferred-endpoint": "use kiro[].preferred-endpoint", "responses-compact-enabled": "no /responses/compact",
    "responses-websocket-enabled": "no websocket routes", "antigravity-signature-cache-enabled": "no antigravity",
    "antigravity-signature-bypass-strict": "no antigravity", "disable-image-generation": "no image routes",
    "gpt-image-2-base-model": "no image routes", "video-result-auth-cache-ttl": "no video routes",
    "oauth-model-alias": "use each entry's models[].alias", "oauth-excluded-models": "use excluded-models",
    "oauth-upstream": "use each entry's base-url", "payload": "no payload rewriting", "plugins": _UNUSED,
}  # fmt: skip
#: Keys of a nested top-level block.
NESTED = {
    "routing": {
        "session-affinity": "credentials are picked per request",
        "session-affinity-ttl": "no session affinity",
    },
    "streaming": {"bootstrap-retries": "streams already fail over until their first byte"},
}
#: Keys of any provider entry.
ENTRY = {
    "cloak": "no cloaking", "rebuild-mid-system-message": _UNUSED, "experimental-cch-signing": _UNUSED,
    "websockets": "upstream calls are HTTP", "start-url": "the token file names its own", "note": _UNUSED,
    "upstream-api-keys": "use upstream-api-key", "restrict-management-to-localhost": "no management API",
    "model-mappings": "use models[].alias", "force-model-mappings": "use models[].alias",
}  # fmt: skip
MODEL = {"force-mapping": "clients always see the alias", "image": _UNUSED, "thinking": "use a model(level) suffix",
         "fork": _UNUSED}  # fmt: skip
_RPM_TPM = "only rpm and tpm are enforced"
_SKIPPED = "a credential over its limit is skipped, not waited for"
RATE_LIMIT = {"rpd": _RPM_TPM, "tpd": _RPM_TPM, "wait-on-limit": _SKIPPED, "max-wait-seconds": _SKIPPED}
_SOCKS = ("socks5://", "socks5h://", "socks4://", "socks4a://")


@dataclass
class Ignored:
    """What was left out of a document: one note per key (with where it first appeared), one per skipped entry."""

    keys: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # key → (reason, first place, count)
    skipped: list[str] = field(default_factory=list)

    def key(self, name: str, reason: str, where: str) -> None:
        _, first, count = self.keys.get(name, (reason, where, 0))
        self.keys[name] = (reason, first, count + 1)

    def notes(self) -> list[str]:
        lines = []
        for name, (reason, first, count) in self.keys.items():
            place = f" (at {first}" + (f" and {count - 1} more)" if count > 1 else ")") if first != name else ""
            lines.append(f"{name}: ignored, {reason}{place}")
        return lines + self.skipped


def _take(mapping: dict[str, Any], known: dict[str, str], generic: str, where: str, ignored: Ignored) -> None:
    for name in [k for k in mapping if k in known]:
        ignored.key(f"{generic}{name}", known[name], f"{where}{name}")
        del mapping[name]


def _socks(url: Any) -> bool:
    return isinstance(url, str) and url.lower().startswith(_SOCKS)


def _entry(block: str, index: int, entry: dict[str, Any], default_socks: bool, ignored: Ignored) -> bool:
    """Strip one provider entry in place; False when it cannot be served (its egress is a SOCKS proxy)."""
    where = f"{block}[{index}]"
    _take(entry, ENTRY, f"{block}[].", f"{where}.", ignored)
    models = entry.get("models")
    if isinstance(models, list):
        entry["models"] = models = [dict(m) if isinstance(m, dict) else m for m in models]
        for number, model in enumerate(models):
            if isinstance(model, dict):
                _take(model, MODEL, f"{block}[].models[].", f"{where}.models[{number}].", ignored)
    limit = entry.get("rate-limit")
    if isinstance(limit, dict):
        entry["rate-limit"] = limit = dict(limit)
        _take(limit, RATE_LIMIT, f"{block}[].rate-limit.", f"{where}.rate-limit.", ignored)
    own = entry.get("proxy-url")
    socks = _socks(own) or (own is None and default_socks)
    keys = entry.get("api-key-entries")
    if isinstance(keys, list):
        served = [k for k in keys if not isinstance(k, dict) or not (_socks(k.get("proxy-url")) or (
            k.get("proxy-url") is None and socks))]  # fmt: skip
        if len(served) != len(keys):
            ignored.skipped.append(f"{where}: {len(keys) - len(served)} api-key-entries not served: their proxy-url "
                                   "is a SOCKS proxy, which cliproxy does not support (HTTP proxies only)")  # fmt: skip
            if not served:
                return False
            entry["api-key-entries"] = served
        if _socks(own):
            del entry["proxy-url"]  # what remains has its own HTTP proxy
        return True
    if socks:
        ignored.skipped.append(f"{where}: not served: its proxy-url is a SOCKS proxy, which cliproxy does not "
                               "support (HTTP proxies only)")  # fmt: skip
        return False
    return True


def strip(document: dict[str, Any]) -> tuple[dict[str, Any], Ignored]:
    """A copy of ``document`` without what cliproxy does not implement, and what was taken out."""
    ignored = Ignored()
    document = dict(document)
    if "amp-code" in document and "ampcode" not in document:  # the block's name at cliproxyapi++'s HEAD
        document["ampcode"] = document.pop("amp-code")
    if isinstance(document.get("ampcode"), dict):  # cliproxyapi++ writes one mapping, not a list
        document["ampcode"] = [document["ampcode"]]
    _take(document, TOP_LEVEL, "", "", ignored)
    if isinstance(document.get("request-log"), bool):  # cliproxyapi++'s switch for logging whole bodies
        document.pop("request-log")
        ignored.key("request-log", "bodies are never logged: use request-log: {enabled: true}", "request-log")
    for name, known in NESTED.items():
        if isinstance(document.get(name), dict):
            document[name] = dict(document[name])
            _take(document[name], known, f"{name}.", f"{name}.", ignored)
    default_socks = _socks(document.get("proxy-url"))
    if default_socks:
        del document["proxy-url"]
    for block in KINDS:
        entries = document.get(block)
        if not isinstance(entries, list):
            continue
        kept = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                kept.append(entry)
                continue
            entry = dict(entry)
            if _entry(block, index, entry, default_socks, ignored):
                kept.append(entry)
        document[block] = kept
    return document, ignored
