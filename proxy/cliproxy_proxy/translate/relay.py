"""Streams between formats: upstream SSE decoded to canonical events and re-encoded for the client, as they come."""

from __future__ import annotations

from .canonical import Event, Finish, MessageStart, StreamDecoder, StreamEncoder
from .sse import SSEParser


class TranslatingRelay:
    """The counterpart of the pass-through ``SSERelay``: same ``feed``/``flush``/``usage``, across formats."""

    __slots__ = ("decoder", "encoder", "model", "parser", "usage")

    def __init__(self, decoder: StreamDecoder, encoder: StreamEncoder, exposed_model: str) -> None:
        self.parser = SSEParser()
        self.decoder = decoder
        self.encoder = encoder
        self.model = exposed_model
        self.usage: tuple[int, int] | None = None

    def feed(self, chunk: bytes) -> bytes:
        return self._translate(self.parser.feed(chunk))

    def flush(self) -> bytes:
        return self._translate(self.parser.flush()) + self.encoder.close()

    def _translate(self, raw: list[tuple[str | None, bytes]]) -> bytes:
        out = []
        for name, data in raw:
            for event in self.decoder.feed(name, data):
                out.append(self.encoder.encode(self._observe(event)))
        return b"".join(out)

    def _observe(self, event: Event) -> Event:
        if isinstance(event, MessageStart):
            event.model = self.model  # the client sees the id it asked for, not the upstream's
        elif isinstance(event, Finish) and event.usage is not None:
            self.usage = (event.usage.input, event.usage.output)
        return event
