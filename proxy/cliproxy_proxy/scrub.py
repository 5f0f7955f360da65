"""An upstream's own key out of whatever it sends back, in every spelling JSON allows and across chunk boundaries.

An upstream (or a proxy in front of it) may echo the request's ``Authorization`` header: plainly, JSON-escaped
character by character (``\\u0073k-...``), with ``\\/`` for ``/``, and cut anywhere by the network.
"""

from __future__ import annotations

import re
from functools import lru_cache

import orjson

REDACTED = b"[REDACTED]"
_BACKSLASH = ord("\\")
_ESCAPE = 6  # the longest JSON spelling of one character: \uXXXX
_HEX4 = re.compile(rb"[0-9a-fA-F]{4}")


@lru_cache(maxsize=512)
def _pattern(secret: str) -> re.Pattern[bytes]:
    """Every spelling of ``secret``: each character plain, ``\\uXXXX`` in either case, or ``\\/`` for ``/``."""
    parts = []
    for char in secret:
        forms = [re.escape(char.encode()), rb"\\u(?i:%04x)" % ord(char)]
        if char == "/":
            forms.append(rb"\\/")
        parts.append(b"(?:" + b"|".join(forms) + b")")
    return re.compile(b"".join(parts))


def scrub(data: bytes, secret: str) -> bytes:
    """``data`` with every spelling of ``secret`` replaced; the plain scan alone when no escape is present."""
    if secret.encode() not in data and b"\\u" not in data and b"\\/" not in data:
        return data  # the common case at memchr speed: no regular expression runs
    return _pattern(secret).sub(REDACTED, data)


def _positions(data: bytes, needle: bytes, start: int) -> list[int]:
    found = []
    at = data.find(needle, start)
    while at != -1:
        found.append(at)
        at = data.find(needle, at + 1)
    return found


class Scrubber:
    """Scrubs a stream: a piece that may be the start of the secret waits for the next chunk, nothing else does.

    Only a suffix that could still grow into a match is held back, so whole SSE events (ending in a blank
    line) go out at once and a stream's latency is unchanged.
    """

    __slots__ = ("alphabet", "first", "pending", "plain", "secret")

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.plain = secret.encode()
        self.first = self.plain[:1]
        self.alphabet = frozenset(self.plain + b"\\/u0123456789abcdefABCDEF")  # every byte of every spelling
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = scrub(self.pending + chunk if self.pending else chunk, self.secret)
        cut = self._open_match(data)
        self.pending = data[cut:]
        return data[:cut] if self.pending else data

    def flush(self) -> bytes:
        data, self.pending = self.pending, b""
        return data

    def _open_match(self, data: bytes) -> int:
        """Where a spelling of the secret that the end of ``data`` cuts off would begin (``len(data)``: none).

        Only the places a spelling can begin (its first character, or a backslash) are tried, found at C speed.
        """
        if not data or data[-1] not in self.alphabet:
            return len(data)  # a whole SSE event ends in a newline, which no spelling holds: nothing waits
        window = max(0, len(data) - _ESCAPE * len(self.secret))
        escaped = data.rfind(b"\\", window)  # after the last backslash only the plain spelling can run off
        starts = [*_positions(data, self.first, window), *_positions(data, b"\\", window)]
        return min(
            (s for s in starts if (self._runs_off(data, s) if s <= escaped else self.plain.startswith(data[s:]))),
            default=len(data),
        )

    def _runs_off(self, data: bytes, at: int) -> bool:
        """Whether the secret, spelled any way, matches from ``at`` until ``data`` ends in the middle of it."""
        for char in self.secret:
            rest = data[at : at + _ESCAPE]
            if not rest:
                return True
            plain = char.encode()
            if rest.startswith(plain):
                at += len(plain)
            elif rest[0] == _BACKSLASH and len(rest) < _ESCAPE and len(data) - at < _ESCAPE:
                return True  # an escape the chunk cut short: wait for its end
            elif rest[:2] == b"\\u" and _HEX4.fullmatch(rest, 2) and int(rest[2:], 16) == ord(char):
                at += _ESCAPE
            elif char == "/" and rest[:2] == b"\\/":
                at += 2
            else:
                return plain.startswith(rest)  # a multi-byte character cut short, or no match
        return False  # a whole match: scrub() already replaced it


#: The JSON string values that carry generated text in the four stream formats (deltas, parts, arguments).
_TEXT_VALUE = re.compile(rb'"(?:content|text|delta|thinking|partial_json|arguments)"\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"')
_HOLD_FROM = 4  # a text that ends in this much of the key or more waits for the next event
_HOLD_AT_MOST = 1 << 16  # bytes: past this the events go out whatever they end in


class TextScrubber:
    """A key streamed piece by piece, one piece per event, as generated text is: scrubbed across the events.

    Events whose text so far ends in the key's first characters wait for the next event; once the key is
    whole its pieces are cut out of the waiting events' text values (at most ``_HOLD_FROM - 1`` characters may
    have gone out before). Text that begins no key never waits. Input and output are whole SSE events.
    """

    __slots__ = ("held", "secret", "sent")

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.held = b""
        self.sent = ""  # the end of the text already sent: a key may begin in it

    def feed(self, events: bytes) -> bytes:
        data = self.held + events if self.held else events
        self.held = b""
        joined = self.sent + "".join([_json_text(v) for v in _TEXT_VALUE.findall(data)])
        found = joined.find(self.secret)
        if found != -1:  # rare: the values again, with where they are, to cut the key out; then look again
            values = list(_TEXT_VALUE.finditer(data))
            texts = [_json_text(v.group(1)) for v in values]
            return self.feed(_cut(data, values, texts, len(self.sent), found, len(self.secret)))
        if len(data) < _HOLD_AT_MOST and self._may_begin(joined):
            self.held = data
            return b""
        self.sent = joined[-(_HOLD_FROM - 1) :]  # a longer start of the key would have waited
        return data

    def flush(self) -> bytes:
        data, self.held = self.held, b""
        return data

    def _may_begin(self, text: str) -> bool:
        """Whether ``text`` ends in the key's first ``_HOLD_FROM`` or more characters."""
        head = self.secret[:_HOLD_FROM]
        at = text.find(head, max(0, len(text) - len(self.secret) + 1))  # usually -1 at once
        while at != -1:
            if self.secret.startswith(text[at:]):
                return True
            at = text.find(head, at + 1)
        return False


def scrub_answer(body: bytes, secret: str) -> bytes:
    """A whole answer scrubbed, a key split across its text values (content blocks, parts) included.

    The values are joined only when the body holds the key's first or last ``_HOLD_FROM`` characters or an
    escape: a key cut in two leaves one of its ends whole in one value, and most answers hold neither. A key
    cut in more pieces than that is a key spelled out on purpose, which no scrubbing can stop.
    """
    body = scrub(body, secret)
    ends = secret.encode()[:_HOLD_FROM], secret.encode()[-_HOLD_FROM:]
    if ends[0] not in body and ends[1] not in body and b"\\u" not in body and b"\\/" not in body:
        return body
    pieces = TextScrubber(secret)
    return pieces.feed(body) + pieces.flush()


def _json_text(literal: bytes) -> str:
    if b"\\" not in literal:  # nothing escaped: the bytes are the text
        return literal.decode(errors="replace")
    try:
        text = orjson.loads(b'"' + literal + b'"')
    except orjson.JSONDecodeError:
        return ""
    return text if isinstance(text, str) else ""


def _cut(data: bytes, values: list[re.Match[bytes]], texts: list[str], offset: int, found: int, length: int) -> bytes:
    """``data`` with the joined text's characters ``[found, found + length)`` cut from its values.

    ``offset``: where the values' text begins in the joined text (after what was sent already).
    """
    end, marked = found + length, False
    pieces, last = [], 0
    for value, text in zip(values, texts, strict=True):
        start = offset
        offset += len(text)
        lo, hi = max(found, start) - start, min(end, offset) - start
        if lo >= hi:
            continue
        replaced = text[:lo] + ("" if marked else REDACTED.decode()) + text[hi:]
        marked = True
        pieces += [data[last : value.start(1)], orjson.dumps(replaced)[1:-1]]
        last = value.end(1)
    return b"".join([*pieces, data[last:]])
