"""Server-Sent Events parsing for upstream streams that must be translated event by event."""

from __future__ import annotations

from .canonical import Event, EventDecoder


class SSEParser:
    """Feeds on raw bytes, yields complete events as (``event:`` name or None, joined ``data:`` bytes)."""

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        data = (self.buffer + chunk).replace(b"\r\n", b"\n")
        *blocks, self.buffer = data.split(b"\n\n")
        return [event for block in blocks if (event := _parse(block)) is not None]

    def flush(self) -> list[tuple[str | None, bytes]]:
        block, self.buffer = self.buffer, b""
        event = _parse(block)
        return [event] if event is not None else []


def _parse(block: bytes) -> tuple[str | None, bytes] | None:
    name: str | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        key, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if key == b"event":
            name = value.decode("utf-8", "replace")
        elif key == b"data":
            data.append(value)
    return (name, b"\n".join(data)) if data else None


class SSEDecoder:
    """The byte-fed stream decoder of an SSE wire: the shared parser, then the codec's decoder of one event."""

    __slots__ = ("events", "parser")

    def __init__(self, events: EventDecoder) -> None:
        self.parser = SSEParser()
        self.events = events

    def feed(self, chunk: bytes) -> list[Event]:
        return [event for name, data in self.parser.feed(chunk) for event in self.events.feed(name, data)]

    def close(self) -> list[Event]:
        return [event for name, data in self.parser.flush() for event in self.events.feed(name, data)]
