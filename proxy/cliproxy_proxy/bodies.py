"""A request body decoded from its Content-Encoding, with the size limit applied to what it decodes to.

aiohttp can decode bodies itself, but does it inside its HTTP parser: a body that lies about its encoding then
becomes a plain-text 400 before any handler runs, never an error in the caller's API format. The app turns that
off (``auto_decompress=False``) and decodes here, where a bomb stops one chunk past the limit.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import brotli  # type: ignore[import-untyped]  # (brotli-stubs lags: it lacks output_buffer_limit)

try:
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]  # Python 3.14
except ImportError:  # pragma: no cover - before 3.14
    from backports import zstd  # type: ignore[no-redef,unused-ignore]


class BodyRefused(Exception):
    """A body the proxy will not read: the status, message and code the caller gets."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def decode(raw: bytearray, encoding: str, limit: int) -> bytes | bytearray:
    """``raw`` as it was before ``Content-Encoding: encoding``; decoding to more than ``limit`` bytes is a 413."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    decoder = _DECODERS.get(encoding)
    if decoder is None:
        raise BodyRefused(415, "Unsupported Content-Encoding: send the body plain, or as gzip, deflate, br or zstd.",
                          "unsupported_content_encoding")  # fmt: skip
    try:
        body, complete = decoder(raw, limit + 1)
    except (zlib.error, brotli.error, zstd.ZstdError):
        body, complete = b"", False
    if len(body) > limit:
        raise BodyRefused(413, "The request body is larger than the proxy accepts (max-body-bytes) once decoded.",
                          "request_too_large")  # fmt: skip
    if not complete:
        raise BodyRefused(400, f"The request body is not valid {encoding} data, as its Content-Encoding says.",
                          "invalid_content_encoding")  # fmt: skip
    return body


# Each decoder returns at most about ``cap`` bytes, and whether that was the whole of a well-formed stream.
Decoder = Callable[[bytearray, int], tuple[bytes, bool]]


def _zlib(raw: bytearray, cap: int, wbits: int) -> tuple[bytes, bool]:
    decompressor = zlib.decompressobj(wbits)
    body = decompressor.decompress(raw, cap)
    return body, decompressor.eof and not decompressor.unused_data


def _deflate(raw: bytearray, cap: int) -> tuple[bytes, bool]:
    """HTTP's deflate is zlib-wrapped; some clients send it raw, which the first byte tells apart."""
    wrapped = bool(raw) and raw[0] & 0x0F == 8
    return _zlib(raw, cap, zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)


def _brotli(raw: bytearray, cap: int) -> tuple[bytes, bool]:
    decompressor = brotli.Decompressor()
    body = decompressor.process(raw, output_buffer_limit=cap)
    return body, decompressor.is_finished()


def _zstd(raw: bytearray, cap: int) -> tuple[bytes, bool]:
    decompressor = zstd.ZstdDecompressor()
    body = decompressor.decompress(raw, max_length=cap)
    return body, decompressor.eof and not decompressor.unused_data


_DECODERS: dict[str, Decoder] = {
    "gzip": lambda raw, cap: _zlib(raw, cap, 16 + zlib.MAX_WBITS),
    "x-gzip": lambda raw, cap: _zlib(raw, cap, 16 + zlib.MAX_WBITS),
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}
