"""Hosted tools (Responses' ``web_search``, ``file_search``...; Anthropic's server tools such as
``web_search_20250305``): run by the vendor itself, which no other vendor can do.

Codex CLI declares ``web_search`` by default, so refusing it would break the default Codex config on every
non-OpenAI model. By default (``hosted-tools: drop``) a translated request goes on without them: the answer
carries ``X-Cliproxy-Dropped-Tools`` naming what was left out, and the proxy logs each kind once.
``hosted-tools: refuse`` answers 400 instead. A same-format request passes them through untouched.
"""

from __future__ import annotations

import logging
from typing import Literal

from .translate.canonical import Request, TranslationError

HostedPolicy = Literal["drop", "refuse"]
HEADER = "X-Cliproxy-Dropped-Tools"

log = logging.getLogger("cliproxy.proxy")
_logged: set[str] = set()


def apply_policy(request: Request, policy: HostedPolicy) -> None:
    """Refuse a request that declares hosted tools, or let it go on without them (noted once per kind)."""
    if not request.hosted_tools:
        return
    kinds = ", ".join(request.hosted_tools)
    if policy == "refuse":
        message = f"tools: {kinds} run on the vendor's side and cannot be translated (hosted-tools: refuse)"
        raise TranslationError(message)
    new = set(request.hosted_tools) - _logged
    if new:
        _logged.update(new)
        log.warning("hosted tools %s cannot run on a translated provider: left out (hosted-tools: drop)", kinds)


def dropped_header(request: Request | None) -> dict[str, str]:
    """The response header naming the hosted tools a request went on without."""
    if request is None or not request.hosted_tools:
        return {}
    return {HEADER: ",".join(request.hosted_tools)}
