"""Pass upstream bodies through with the least work: rewrite the model id, read token usage, no re-encoding.

A JSON string's own quotes are escaped, so an unescaped ``"model":"<id>"`` can only be a key of the
document itself: a byte substitution rewrites it without decoding and re-encoding the body.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import orjson

from .translate.canonical import USAGE_MARKERS, Usage
from .translate.codec import Codec


class ModelRewrite:
    """Replaces the upstream model id with the exposed one in a JSON body or a run of SSE events.

    The two spellings providers actually send (``"model":"x"`` and ``"model": "x"``) are plain byte
    replacements; any other spacing falls back to a regular expression. ``key``: where the wire names the model
    (Gemini answers with ``modelVersion``).
    """

    __slots__ = ("literals", "pattern", "replacement")

    def __init__(self, upstream: str, exposed: str, key: str = "model") -> None:
        old, new = orjson.dumps(upstream), orjson.dumps(exposed)
        name = orjson.dumps(key)
        self.literals = tuple((sep + old, sep + new) for sep in (name + b":", name + b": "))
        self.pattern = re.compile(b"(" + re.escape(name) + rb"\s*:\s*)" + re.escape(old))
        self.replacement = rb"\g<1>" + new.replace(b"\\", b"\\\\")

    def __call__(self, data: bytes) -> bytes:
        replaced = False
        for old, new in self.literals:
            if old in data:
                data = data.replace(old, new)
                replaced = True
        return data if replaced else self.pattern.sub(self.replacement, data)


def _carries(data: bytes, markers: tuple[bytes, ...]) -> bool:
    """Whether a usage object (not the ``"usage":null`` of every other chunk) may be in ``data``."""
    return any(marker in data for marker in markers)


def _carries_usage(data: bytes) -> bool:
    return _carries(data, USAGE_MARKERS)


class SSERelay:
    """Cuts an SSE byte stream at event boundaries so each write holds whole events.

    Bytes after the last boundary wait for the next chunk; everything before it goes out at once. ``complete``
    turns true once the format's terminal event (``end``, the codec's ``stream_end``) has gone by. ``wire``
    reads the token usage of the events that report it (their running totals merged).
    ``drop_usage``: the proxy asked for the usage the client did not (to count tokens); it is read, not relayed.
    """

    __slots__ = ("complete", "drop_usage", "end", "pending", "rewrite", "usage", "wire")

    def __init__(
        self, rewrite: ModelRewrite | None, end: Callable[[bytes], bool], wire: Codec, drop_usage: bool = False
    ) -> None:
        self.rewrite = rewrite
        self.end = end
        self.wire = wire
        self.complete = False
        self.drop_usage = drop_usage
        self.pending = b""
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> bytes:
        data = self.pending + chunk if self.pending else chunk
        lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
        end = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
        self.pending = data[end:]
        return self._process(data[:end]) if end else b""

    def flush(self) -> bytes:
        data, self.pending = self.pending, b""
        return self._process(data) if data else b""

    def _process(self, events: bytes) -> bytes:
        if not self.complete and self.end(events):
            self.complete = True
        if _carries(events, self.wire.usage_markers):
            self._read_usage(events)
            if self.drop_usage:
                events = _without_usage(events)
        if self.rewrite is not None:
            events = self.rewrite(events)
        return events

    def _read_usage(self, events: bytes) -> None:
        markers = self.wire.usage_markers
        for line in events.splitlines():
            if line.startswith(b"data:") and _carries(line, markers):
                try:
                    found = self.wire.usage_of(orjson.loads(line[5:]))
                except orjson.JSONDecodeError:
                    continue
                if found is not None:
                    self.usage = found if self.usage is None else self.usage.merged(found)


def _without_usage(events: bytes) -> bytes:
    """The events without their usage: a usage-only chunk goes, a chunk that also carries choices loses the field.

    Runs once per stream (on the chunk that carries usage), so decoding that one chunk is cheap.
    """
    kept = []
    for event in events.split(b"\n\n"):
        data = event.removeprefix(b"data:").strip() if _carries_usage(event) else b""
        if not data:
            kept.append(event)
            continue
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            kept.append(event)
            continue
        if isinstance(chunk, dict) and chunk.get("choices"):
            chunk.pop("usage", None)
            kept.append(b"data: " + orjson.dumps(chunk))
        elif not isinstance(chunk, dict):
            kept.append(event)
    return b"\n\n".join(kept)
