"""Reading a record back: its header, and its payload decompressed within a bound.

The built-in compressors unpack at most ``limit`` bytes (the raw size stored with the
record, or the most spoolq ever compresses), and refuse a payload as soon as its output
passes that, so that a small damaged or hostile record costs its reader no more than the
bytes it says it holds.

Streams (zlib, bz2, lzma) are unpacked a chunk at a time into one growing buffer rather
than into blocks joined at the end, which would hold the output twice; formats that
declare their size up front (zstd, lzo) are checked before anything is allocated.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol, TypeVar

import zstandard

from .errors import CorruptError, SerializationError

__all__ = ["CHUNK", "CUSTOM_ID", "HEAD", "HEADER_SIZE", "LIMIT_MOST", "LIMIT_RAW",
           "RECORD_VERSION", "SLACK", "ZSTD_MAX_RATIO", "as_record", "check_declared",
           "check_zstd_size", "failed", "parse_header", "too_large", "unpack_stream",
           "unpack_with", "unpack_zstd_dict"]

_E = TypeVar("_E", bound=Exception)

RECORD_VERSION = 1
CUSTOM_ID = 255
HEAD = struct.Struct("<BBBI")
"""A record's header: version, serializer id, compressor id, CRC-32."""
HEADER_SIZE = HEAD.size

CHUNK = 1 << 20
"""The most one step of a stream's unpacking adds: beyond the bound, a reader holds
about this much more while unpacking."""

LIMIT_MOST = "the most spoolq ever compresses"
"""Why the limit is what it is, when it is spoolq's own limit."""
LIMIT_RAW = "the raw size stored with the record"
"""Why the limit is what it is, when the record's stored raw size sets it."""

SLACK = 4 * CHUNK
"""A zstd frame too short to declare more than its bound and this is decompressed without
reading its header first (and refused after, when it made more than the bound)."""

ZSTD_MAX_RATIO = 32 * 1024
"""A zstd block holds at most 128 KiB, and the smallest (an RLE block) takes 4 bytes: a
frame this many times shorter than a bound cannot declare more than it."""


def too_large(limit: int, why: str, size: int | None = None) -> ValueError:
    """The error for a payload that decompresses beyond ``limit`` bytes (``why`` says
    what the limit is): to ``size`` bytes as the payload declares, or (None) to more than
    the limit, where decompressing stopped."""
    if size is None:
        return ValueError(f"the payload decompresses to more than {limit} bytes, {why}")
    return ValueError(f"the payload declares {size} bytes, more than {limit}, {why}")


def check_declared(size: int, limit: int, why: str) -> None:
    """Refuse a payload whose header declares ``size`` bytes, more than ``limit``."""
    if size > limit:
        raise too_large(limit, why, size)


def check_zstd_size(frame: bytes | memoryview, limit: int, why: str,
                    fmt: int = zstandard.FORMAT_ZSTD1) -> None:
    """Refuse a zstd frame that declares more than ``limit`` bytes of content (zstd
    allocates what the frame declares before it decompresses anything)."""
    if len(frame) * ZSTD_MAX_RATIO > limit:
        check_declared(zstandard.get_frame_parameters(frame, format=fmt).content_size,
                       limit, why)


class _Unpacker(Protocol):
    """What zlib's, bz2's and lzma's decompressor objects share."""

    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


def unpack_stream(unpacker: _Unpacker, data: bytes, limit: int, why: str,
                  rest: bytes | None = None) -> bytes | bytearray:
    """The whole stream ``data`` unpacked by ``unpacker`` (a new decompressor object), at
    most ``limit`` bytes of it: ValueError as soon as the output passes ``limit``, or
    when the stream ends early. ``rest`` is what to feed the unpacker after the first
    step: None for zlib, which keeps the input it has not read in ``unconsumed_tail``;
    bz2 and lzma keep it themselves, and take ``b""``. Output of more than one step comes
    back as a bytearray (making bytes of it would hold it twice)."""
    want = min(limit + 1, CHUNK)
    out = unpacker.decompress(data, want)
    if unpacker.eof or len(out) < want:  # the end of the stream, or of its input
        if len(out) > limit:
            raise too_large(limit, why)
        if not unpacker.eof:
            raise ValueError("the compressed data ends before the end of its stream")
        return out
    whole = bytearray(out)
    del out
    while not unpacker.eof:
        if len(whole) > limit:
            raise too_large(limit, why)
        want = min(limit + 1 - len(whole), CHUNK)
        more = unpacker.decompress(
            rest if rest is not None else unpacker.unconsumed_tail,  # type: ignore[attr-defined]
            want)
        whole += more
        if len(more) < want and not unpacker.eof:
            break  # no more input and no end of stream: cut short
    if len(whole) > limit:
        raise too_large(limit, why)
    if not unpacker.eof:
        raise ValueError("the compressed data ends before the end of its stream")
    return whole


def failed(kind: type[_E], record_id: int | None, what: str, exc: Exception) -> _E:
    """``kind("record <id> could not be <what>: <exc>")``, caused by ``exc``."""
    where = f"record {record_id}" if record_id is not None else "record"
    error = kind(f"{where} could not be {what}: {exc}")
    error.__cause__ = exc
    return error


def unpack_with(comp: Any, custom: str | None, payload: bytes, where: str, limit: int,
                why: str) -> bytes | bytearray:
    """``payload`` (of the record ``where`` names) decompressed by ``comp``: a built-in
    compressor's ``unpack`` within ``limit``, or the ``decompress`` of the custom one
    named ``custom``, whose output is refused when longer. :class:`CorruptError` when a
    built-in fails (the checksum passed, so the record was made so), SerializationError
    when a custom one does."""
    try:
        if custom is None:
            return comp.unpack(payload, limit, why)  # type: ignore[no-any-return]
        data = comp.decompress(payload)
    except Exception as exc:
        if custom is not None:  # the checksum passed: the compressor failed, not the file
            raise SerializationError(f"{where} could not be decompressed by the custom "
                                     f"compressor {custom!r}: {exc}") from exc
        raise CorruptError(f"{where} could not be decompressed: {exc}") from exc
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) > limit:
            raise CorruptError(f"{where} could not be decompressed: {too_large(limit, why)}")
        return data if type(data) is bytes else bytes(data)
    # bytes() of an int or a list would make up a payload instead of failing.
    raise SerializationError(f"{where}: the {custom} compressor returned "
                             f"{type(data).__name__}, not bytes")


def unpack_zstd_dict(zdict: Any, payload: bytes, where: str, limit: int,
                     why: str) -> bytes:
    """A ``zstd-dict`` payload decompressed by ``zdict`` (a
    :class:`~spoolq.zdict.ZstdDictCompressor`), refused unless its frame declares at most
    ``limit`` bytes; :class:`MissingDictionary` when it needs a dictionary ``zdict`` lacks."""
    try:
        check_zstd_size(memoryview(payload)[1:], limit, why, zstandard.FORMAT_ZSTD1_MAGICLESS)
        return bytes(zdict.decompress(payload))
    except SerializationError as exc:
        raise type(exc)(f"{where}: {exc}") from exc
    except Exception as exc:
        raise CorruptError(f"{where} could not be decompressed: {exc}") from exc


def parse_header(record: bytes, record_id: int | None
                 ) -> tuple[int, int, int, list[str], int]:
    """A record's serializer id, compressor id, checksum, custom codec names and where
    its payload starts; :class:`CorruptError` when the header is cut short or of an
    unknown version."""
    where = f"record {record_id}" if record_id is not None else "record"
    if len(record) < HEADER_SIZE:
        raise CorruptError(f"{where} is truncated: {len(record)} bytes, shorter than its header")
    version, ser_id, comp_id, crc = HEAD.unpack_from(record)
    if version != RECORD_VERSION:
        raise CorruptError(f"{where} has unknown record version {version}")
    pos = HEADER_SIZE
    names: list[str] = []
    for ident in (ser_id, comp_id):
        if ident == CUSTOM_ID:
            if pos >= len(record):
                raise CorruptError(f"{where} is truncated inside its codec name")
            size = record[pos]
            raw_name = record[pos + 1 : pos + 1 + size]
            if len(raw_name) != size:
                raise CorruptError(f"{where} is truncated inside its codec name")
            names.append(raw_name.decode("utf-8", "replace"))
            pos += 1 + size
    return ser_id, comp_id, crc, names, pos


def as_record(record: object) -> bytes:
    """A bytes-like record as bytes; TypeError naming anything else."""
    if not isinstance(record, (bytes, bytearray, memoryview)):
        raise TypeError(f"a record is bytes, not {type(record).__name__}")
    return bytes(record)
