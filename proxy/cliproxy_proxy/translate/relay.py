"""Streams between formats: upstream SSE decoded to canonical events and re-encoded for the client, as they come."""

from __future__ import annotations

from typing import Protocol

from .canonical import Event, Finish, MessageStart, StreamDecoder, StreamEncoder, StreamError, Usage
from .sse import SSEParser


class TranslatingRelay:
    """The counterpart of the pass-through ``SSERelay``: same ``feed``/``flush``/``usage``/``complete``, across formats.

    The stream is complete once the upstream decoder has seen its format's finish (or error): the encoder then
    closes the client's stream. Without it the upstream was cut short, and nothing is made up to close it.
    """

    __slots__ = ("complete", "decoder", "encoder", "model", "parser", "usage")

    def __init__(self, decoder: StreamDecoder, encoder: StreamEncoder, exposed_model: str) -> None:
        self.parser = SSEParser()
        self.decoder = decoder
        self.encoder = encoder
        self.model = exposed_model
        self.usage: Usage | None = None
        self.complete = False

    def feed(self, chunk: bytes) -> bytes:
        return self._translate(self.parser.feed(chunk))

    def flush(self) -> bytes:
        return self._close(self._translate(self.parser.flush()))

    def _close(self, tail: bytes) -> bytes:
        return tail + self.encoder.close() if self.complete else tail

    def _translate(self, raw: list[tuple[str | None, bytes]]) -> bytes:
        return self._encode([event for name, data in raw for event in self.decoder.feed(name, data)])

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


class FramedDecoder(StreamDecoder, Protocol):
    """A decoder of a binary framed stream (Kiro's AWS event-stream), fed bytes rather than SSE events."""

    def feed_bytes(self, chunk: bytes) -> list[Event]: ...

    def close(self) -> list[Event]: ...


class FramedRelay(TranslatingRelay):
    """A :class:`TranslatingRelay` for upstreams that stream binary frames instead of SSE."""

    __slots__ = ("framed",)

    def __init__(self, decoder: FramedDecoder, encoder: StreamEncoder, exposed_model: str) -> None:
        super().__init__(decoder, encoder, exposed_model)
        self.framed = decoder  # the same decoder, typed for its byte interface

    def feed(self, chunk: bytes) -> bytes:
        return self._encode(self.framed.feed_bytes(chunk))

    def flush(self) -> bytes:
        return self._close(self._encode(self.framed.close()))
