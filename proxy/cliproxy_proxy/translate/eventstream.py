"""AWS event-stream framing (``application/vnd.amazon.eventstream``), the binary stream Kiro answers with.

Each message is ``total length (u32) | headers length (u32) | prelude CRC32 | headers | payload | message CRC32``,
big-endian, both CRCs being CRC-32 (``zlib.crc32``) over everything before them. A header is a one-byte name
length, the name, a one-byte type tag and a typed value. The decoder is incremental: chunks may split a message
anywhere, and only whole messages are returned. Payload bytes are sliced, never walked byte by byte.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from .canonical import Event, StreamError

HeaderValue = bool | int | bytes | str | uuid.UUID

#: A message longer than this is refused rather than buffered (AWS caps event-stream messages at 16 MiB).
MAX_MESSAGE = 16 * 1024 * 1024
_PRELUDE = struct.Struct(">III")  # total length, headers length, prelude CRC
_LENGTHS = struct.Struct(">II")
_CRC = struct.Struct(">I")
_MIN_MESSAGE = _PRELUDE.size + _CRC.size
# type tag -> (struct for fixed-size values, or None for length-prefixed values)
_FIXED = {2: struct.Struct(">b"), 3: struct.Struct(">h"), 4: struct.Struct(">i"), 5: struct.Struct(">q"),
          8: struct.Struct(">q")}  # fmt: skip
_U16 = struct.Struct(">H")
_STRING, _BYTES, _UUID = 7, 6, 9


class EventStreamError(ValueError):
    """A stream that is not valid event-stream framing (bad CRC, impossible lengths, unknown header type)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded message: typed headers (timestamps as epoch milliseconds) and the raw payload."""

    headers: dict[str, HeaderValue] = field(default_factory=dict)
    payload: bytes = b""

    def header(self, name: str) -> str | None:
        """A string header's value, or None when absent or of another type."""
        value = self.headers.get(name)
        return value if isinstance(value, str) else None


def _decode_headers(data: bytes | memoryview) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    at, end = 0, len(data)
    try:
        while at < end:
            size = data[at]
            name = bytes(data[at + 1 : at + 1 + size]).decode()
            at += 1 + size
            kind = data[at]
            at += 1
            value: HeaderValue
            if kind in (0, 1):
                value = kind == 0
            elif (fixed := _FIXED.get(kind)) is not None:
                (value,) = fixed.unpack_from(data, at)
                at += fixed.size
            elif kind in (_BYTES, _STRING):
                (length,) = _U16.unpack_from(data, at)
                raw = bytes(data[at + 2 : at + 2 + length])
                if len(raw) != length:
                    raise EventStreamError("header value runs past the header block")
                value = raw.decode() if kind == _STRING else raw
                at += 2 + length
            elif kind == _UUID:
                raw = bytes(data[at : at + 16])
                if len(raw) != 16:
                    raise EventStreamError("header value runs past the header block")
                value = uuid.UUID(bytes=raw)
                at += 16
            else:
                raise EventStreamError(f"header {name!r}: unknown value type {kind}")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError) as error:
        raise EventStreamError(f"malformed headers: {error}") from None
    if at != end:
        raise EventStreamError("headers overrun their declared length")
    return headers


class EventStreamDecoder:
    """Incremental decoder: ``feed`` any chunk, get every message it completed.

    After an :class:`EventStreamError` the stream cannot be resynchronised and the decoder should be dropped.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held for a message not yet complete (non-zero at the end of a stream means it was cut)."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[Message]:
        buffer = self._buffer
        buffer += chunk
        messages: list[Message] = []
        at, size = 0, len(buffer)
        with memoryview(buffer) as view:
            while size - at >= _PRELUDE.size:
                total, header_size, prelude_crc = _PRELUDE.unpack_from(view, at)
                if zlib.crc32(view[at : at + 8]) != prelude_crc:
                    raise EventStreamError("prelude CRC mismatch")
                if total < _MIN_MESSAGE or total > MAX_MESSAGE or header_size > total - _MIN_MESSAGE:
                    raise EventStreamError(f"impossible message length {total} (headers {header_size})")
                if size - at < total:
                    break
                end = at + total
                (message_crc,) = _CRC.unpack_from(view, end - 4)
                if zlib.crc32(view[at : end - 4]) != message_crc:
                    raise EventStreamError("message CRC mismatch")
                start = at + _PRELUDE.size
                headers = _decode_headers(view[start : start + header_size])
                messages.append(Message(headers, bytes(view[start + header_size : end - 4])))
                at = end
        if at:
            del buffer[:at]
        return messages


class FramedEventDecoder:
    """A codec's byte-fed stream decoder over event-stream frames (Kiro, Bedrock): each wire says what one frame
    means (``frame``, setting ``done`` at a terminal one) and what a clean end adds (``finish``). A framing error
    or a stream cut mid-frame becomes a ``StreamError``, after which nothing more is decoded."""

    vendor = "AWS"  # names the upstream in the errors

    def __init__(self) -> None:
        self.frames = EventStreamDecoder()
        self.done = False

    def feed(self, chunk: bytes) -> list[Event]:
        if self.done:
            return []
        try:
            frames = self.frames.feed(chunk)
        except EventStreamError as error:
            self.done = True
            return [StreamError(502, f"{self.vendor} stream is not valid event-stream framing: {error}")]
        events: list[Event] = []
        for frame in frames:
            events.extend(self.frame(frame))
            if self.done:
                break
        return events

    def close(self) -> list[Event]:
        if self.done:
            return []
        self.done = True
        if self.frames.pending:
            return [StreamError(502, f"{self.vendor} stream ended in the middle of a message")]
        return self.finish()

    def frame(self, frame: Message) -> list[Event]:
        raise NotImplementedError

    def finish(self) -> list[Event]:
        return []


def _encode_header(name: str, value: HeaderValue) -> bytes:
    raw_name = name.encode()
    if len(raw_name) > 255:
        raise ValueError(f"header name too long: {name!r}")
    head = bytes([len(raw_name)]) + raw_name
    if isinstance(value, bool):
        return head + bytes([0 if value else 1])
    if isinstance(value, int):
        kind = 4 if -(2**31) <= value < 2**31 else 5
        return head + bytes([kind]) + _FIXED[kind].pack(value)
    if isinstance(value, uuid.UUID):
        return head + bytes([_UUID]) + value.bytes
    raw = value.encode() if isinstance(value, str) else value
    if len(raw) > 0xFFFF:
        raise ValueError(f"header {name!r}: value too long")
    return head + bytes([_STRING if isinstance(value, str) else _BYTES]) + _U16.pack(len(raw)) + raw


def encode_message(headers: Mapping[str, HeaderValue], payload: bytes) -> bytes:
    """One framed message (strings become string headers, ints int32/int64, bools, bytes, UUIDs)."""
    block = b"".join(_encode_header(name, value) for name, value in headers.items())
    lengths = _LENGTHS.pack(_MIN_MESSAGE + len(block) + len(payload), len(block))
    prelude = lengths + _CRC.pack(zlib.crc32(lengths))
    body = prelude + block + payload
    return body + _CRC.pack(zlib.crc32(body))


def event(event_type: str, payload: bytes) -> bytes:
    """An ordinary JSON event as AWS services frame it."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, payload)


def exception(exception_type: str, payload: bytes) -> bytes:
    """A modelled exception sent mid-stream (``:message-type: exception``)."""
    headers = {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"}
    return encode_message(headers, payload)
