"""Streams between formats: upstream bytes decoded to canonical events and re-encoded for the client, as they come."""

from __future__ import annotations

from .canonical import Event, Finish, MessageStart, StreamEncoder, StreamError, Usage
from .codec import StreamDecoder


class TranslatingRelay:
    """The counterpart of the pass-through ``SSERelay``: same ``feed``/``flush``/``usage``/``complete``, across formats.

    The stream is complete once the upstream decoder has seen its format's finish (or error): the encoder then
    closes the client's stream. Without it the upstream was cut short, and nothing is made up to close it.
    """

    __slots__ = ("complete", "decoder", "encoder", "model", "usage")

    def __init__(self, decoder: StreamDecoder, encoder: StreamEncoder, exposed_model: str) -> None:
        self.decoder = decoder
        self.encoder = encoder
        self.model = exposed_model
        self.usage: Usage | None = None
        self.complete = False

    def feed(self, chunk: bytes) -> bytes:
        return self._encode(self.decoder.feed(chunk))

    def flush(self) -> bytes:
        tail = self._encode(self.decoder.close())
        return tail + self.encoder.close() if self.complete else tail

    def _encode(self, events: list[Event]) -> bytes:
        return b"".join(self.encoder.encode(self._observe(event)) for event in events)

    def _observe(self, event: Event) -> Event:
        if isinstance(event, MessageStart):
            event.model = self.model  # the client sees the id it asked for, not the upstream's
        elif isinstance(event, Finish):
            if event.usage is not None:
                self.usage = event.usage
            self.complete = self.complete or event.reason is not None
        elif isinstance(event, StreamError):
            self.complete = True
        return event
