"""AWS event-stream framing: round trips, arbitrary chunking, and refusal of damaged streams."""

from __future__ import annotations

import random
import struct
import uuid
import zlib

import pytest

from cliproxy_proxy.translate.eventstream import (
    EventStreamDecoder,
    EventStreamError,
    HeaderValue,
    Message,
    encode_message,
    event,
    exception,
)

HEADERS = {":event-type": "assistantResponseEvent", ":content-type": "application/json", ":message-type": "event"}


def _decode_all(data: bytes) -> list[Message]:
    decoder = EventStreamDecoder()
    messages = decoder.feed(data)
    assert decoder.pending == 0
    return messages


def test_round_trip_of_string_headers_and_payload() -> None:
    frame = encode_message(HEADERS, b'{"content":"hi"}')
    (message,) = _decode_all(frame)
    assert message.headers == HEADERS
    assert message.payload == b'{"content":"hi"}'
    assert message.header(":event-type") == "assistantResponseEvent"


def test_known_vector_from_the_aws_spec_layout() -> None:
    # An empty message is 16 bytes: lengths (16, 0), the prelude CRC, then the message CRC.
    frame = encode_message({}, b"")
    assert len(frame) == 16
    assert struct.unpack(">II", frame[:8]) == (16, 0)
    assert struct.unpack(">I", frame[8:12])[0] == zlib.crc32(frame[:8])
    assert struct.unpack(">I", frame[12:])[0] == zlib.crc32(frame[:12])
    assert _decode_all(frame) == [Message({}, b"")]


def test_every_header_type_round_trips() -> None:
    ident = uuid.uuid4()
    headers: dict[str, HeaderValue] = {
        "t": True,
        "f": False,
        "small": 7,
        "big": 2**40,
        "neg": -5,
        "raw": b"\x00\xff",
        "s": "ünï",
        "id": ident,
    }
    (message,) = _decode_all(encode_message(headers, b"x"))
    assert message.headers == headers
    assert message.header("small") is None  # not a string header


def test_byte_short_and_timestamp_headers_decode() -> None:
    block = b"\x01b\x02\xfe" + b"\x01h\x03" + struct.pack(">h", -300) + b"\x02ts\x08" + struct.pack(">q", 1_700_000)
    lengths = struct.pack(">II", 16 + len(block), len(block))
    body = lengths + struct.pack(">I", zlib.crc32(lengths)) + block
    frame = body + struct.pack(">I", zlib.crc32(body))
    (message,) = _decode_all(frame)
    assert message.headers == {"b": -2, "h": -300, "ts": 1_700_000}


def test_several_messages_in_one_chunk() -> None:
    frames = [event("assistantResponseEvent", f'{{"content":"{i}"}}'.encode()) for i in range(5)]
    messages = _decode_all(b"".join(frames))
    assert [m.payload for m in messages] == [f'{{"content":"{i}"}}'.encode() for i in range(5)]


def test_every_split_point_of_a_two_message_stream() -> None:
    data = event("a", b'{"x":1}') + exception("ThrottlingException", b'{"message":"slow"}')
    for cut in range(len(data) + 1):
        decoder = EventStreamDecoder()
        messages = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert [m.payload for m in messages] == [b'{"x":1}', b'{"message":"slow"}']
        assert decoder.pending == 0


def test_random_chunking_including_single_bytes() -> None:
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.randrange(0, 3000)) for _ in range(40)]
    data = b"".join(encode_message({":event-type": "e", "n": i}, p) for i, p in enumerate(payloads))
    for _ in range(20):
        decoder, messages, at = EventStreamDecoder(), [], 0
        while at < len(data):
            step = rng.choice([1, 2, 3, 11, 500, 4096])
            messages.extend(decoder.feed(data[at : at + step]))
            at += step
        assert [m.payload for m in messages] == payloads
        assert [m.headers["n"] for m in messages] == list(range(40))


def test_a_partial_message_waits_and_is_reported_pending() -> None:
    frame = event("a", b"{}")
    decoder = EventStreamDecoder()
    assert decoder.feed(frame[:-1]) == []
    assert decoder.pending == len(frame) - 1
    assert len(decoder.feed(frame[-1:])) == 1


def test_a_damaged_payload_fails_the_message_crc() -> None:
    frame = bytearray(event("a", b'{"content":"hello"}'))
    frame[-6] ^= 0x01
    with pytest.raises(EventStreamError, match="message CRC"):
        EventStreamDecoder().feed(bytes(frame))


def test_a_damaged_length_fails_the_prelude_crc() -> None:
    frame = bytearray(event("a", b"{}"))
    frame[3] ^= 0x01
    with pytest.raises(EventStreamError, match="prelude CRC"):
        EventStreamDecoder().feed(bytes(frame))


def test_the_prelude_is_checked_before_waiting_for_the_body() -> None:
    frame = bytearray(event("a", b"{}" * 100))
    frame[9] ^= 0xFF  # the prelude CRC itself
    with pytest.raises(EventStreamError, match="prelude CRC"):
        EventStreamDecoder().feed(bytes(frame[:12]))


def test_impossible_lengths_are_refused() -> None:
    lengths = struct.pack(">II", 8, 0)  # shorter than a prelude and CRC
    with pytest.raises(EventStreamError, match="impossible"):
        EventStreamDecoder().feed(lengths + struct.pack(">I", zlib.crc32(lengths)) + b"\x00" * 4)
    lengths = struct.pack(">II", 32, 40)  # headers longer than the message
    with pytest.raises(EventStreamError, match="impossible"):
        EventStreamDecoder().feed(lengths + struct.pack(">I", zlib.crc32(lengths)))


def test_an_unknown_header_type_is_refused() -> None:
    block = b"\x01x\x0a"
    lengths = struct.pack(">II", 16 + len(block), len(block))
    body = lengths + struct.pack(">I", zlib.crc32(lengths)) + block
    with pytest.raises(EventStreamError, match="unknown value type"):
        EventStreamDecoder().feed(body + struct.pack(">I", zlib.crc32(body)))


def test_exception_frames_carry_their_type() -> None:
    (message,) = _decode_all(exception("ValidationException", b'{"message":"bad"}'))
    assert message.header(":message-type") == "exception"
    assert message.header(":exception-type") == "ValidationException"
