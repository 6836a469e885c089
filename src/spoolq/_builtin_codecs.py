"""The built-in serializers and compressors that :mod:`spoolq.codec` names by id, and the
protocols a custom one follows. Each built-in compressor's ``unpack(data, limit, why)``
decompresses at most ``limit`` bytes (see :mod:`spoolq._unpacking`), and its
``decompress`` at most ``MAX_UNPACKED_SIZE``, so a small damaged or hostile record cannot
make a reader unpack gigabytes (the item that the serializer builds from the payload can
still take many times its size)."""

from __future__ import annotations

import bz2
import json
import lzma
import pickle
import re
import threading
import zlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import cbor2
import zstandard

from ._unpacking import (
    CHUNK,
    LIMIT_MOST,
    SLACK,
    ZSTD_MAX_RATIO,
    check_declared,
    check_zstd_size,
    too_large,
    unpack_stream,
)
from .errors import ConfigurationError
from .zdict import MAX_UNPACKED_SIZE, ZstdDictCompressor

__all__ = ["COMPRESSORS", "SERIALIZERS", "Compressor", "Serializer"]


@runtime_checkable
class Serializer(Protocol):
    """Anything with ``dumps(obj) -> bytes`` and ``loads(bytes) -> obj``."""

    def dumps(self, obj: Any, /) -> bytes: ...

    def loads(self, data: bytes, /) -> Any: ...


@runtime_checkable
class Compressor(Protocol):
    """Anything with ``compress(bytes) -> bytes`` and ``decompress(bytes) -> bytes``."""

    def compress(self, data: bytes, /) -> bytes: ...

    def decompress(self, data: bytes, /) -> bytes: ...


# cbor2 reads containers nested at most 400 deep unless told otherwise, but writes deeper
# ones: without a higher limit a put of such an item succeeds and every get of it fails.
# Its decoder does not recurse on the C stack, so a deep hostile record costs no more
# than a long flat one.
_CBOR_MAX_DEPTH = 100_000


class _Cbor:
    name = "cbor"
    dumps = staticmethod(cbor2.dumps)

    @staticmethod
    def loads(data: bytes) -> Any:
        try:
            return cbor2.loads(data)  # a keyword argument costs every get a third more
        except cbor2.CBORDecodeError as exc:
            if "nesting depth" not in str(exc):
                raise
        return cbor2.loads(data, max_depth=_CBOR_MAX_DEPTH)


class _Pickle:
    name = "pickle"

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes) -> Any:
        return pickle.loads(data)


class _Json:
    name = "json"

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

    @staticmethod
    def loads(data: bytes) -> Any:
        try:
            return json.loads(data)
        except RecursionError:
            return _json_loads_in_a_thread(data)


def _json_loads_in_a_thread(data: bytes) -> Any:
    """``json.loads`` of a deeply nested payload, in a thread of its own. Python's json
    nests as deep as the stack its call finds left: a put from a shallow stack writes
    items that a get from a deeper one could not read (and would send to the dead
    letters). A new thread calling json's scanner itself starts with fewer frames on its
    stack than any call of ``dumps`` has, so it reads whatever a put wrote."""
    text = data.decode(json.detect_encoding(data), "surrogatepass")  # as json.loads does
    scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
    start = _JSON_SPACE.match(text, 0).end()  # type: ignore[union-attr]
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(scan(text, start))
        except BaseException as exc:  # handed to the caller
            outcome.append(exc)

    thread = threading.Thread(target=run, name="spoolq-json-loads", daemon=True)
    thread.start()
    thread.join()
    if isinstance(outcome[0], StopIteration):
        raise json.JSONDecodeError("Expecting value", text, outcome[0].value)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    item, end = outcome[0]
    if _JSON_SPACE.match(text, end).end() != len(text):  # type: ignore[union-attr]
        raise json.JSONDecodeError("Extra data", text, end)
    return item


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


class _Raw:
    name = "raw"

    @staticmethod
    def dumps(obj: Any) -> bytes:
        if isinstance(obj, bytes):
            return obj
        try:
            view = memoryview(obj)  # any bytes-like object: array.array, a numpy array, ...
        except TypeError:
            raise TypeError("the raw serializer takes bytes-like items only, not "
                            f"{type(obj).__name__}") from None
        with view:
            return view.tobytes()

    @staticmethod
    def loads(data: bytes) -> Any:
        return bytes(data)


class _NoCompression:
    name = "none"

    @staticmethod
    def compress(data: bytes) -> bytes:
        return data

    @staticmethod
    def decompress(data: bytes) -> bytes:
        return data

    @staticmethod
    def unpack(data: bytes, limit: int, why: str) -> bytes:
        return data


class _Zstd:
    """zstd at level 3; compressor objects are per thread because they are not thread-safe."""

    name = "zstd"

    def __init__(self, level: int = 3) -> None:
        self._level = level
        self._local = threading.local()

    def _pair(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        pair: tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor] | None = getattr(
            self._local, "pair", None
        )
        if pair is None:
            pair = (zstandard.ZstdCompressor(level=self._level), zstandard.ZstdDecompressor())
            self._local.pair = pair
        return pair

    def compress(self, data: bytes) -> bytes:
        return self._pair()[0].compress(data)

    def decompress(self, data: bytes) -> bytes:
        return self.unpack(data, MAX_UNPACKED_SIZE, LIMIT_MOST)

    def unpack(self, data: bytes, limit: int, why: str) -> bytes:
        """``data`` decompressed, refused unless its frame declares at most ``limit``
        bytes (zstd allocates what it declares, and fails unless the frame holds that).
        A frame too short to declare more than ``limit`` and SLACK is not looked at first:
        reading its header would cost a get of small records a tenth more."""
        if len(data) * ZSTD_MAX_RATIO > limit + SLACK:
            check_zstd_size(data, limit, why)
        out: bytes = self._pair()[1].decompress(data)
        if len(out) > limit:
            raise too_large(limit, why, len(out))
        return out


_Unpack = Callable[[bytes, int, str], "bytes | bytearray"]


class _Module:
    """A compressor backed by a stdlib-style module's compress function and a bounded
    ``unpack`` made for it."""

    def __init__(self, name: str, compress: Callable[[bytes], bytes], unpack: _Unpack) -> None:
        self.name = name
        self.compress = compress
        self.unpack = unpack

    def decompress(self, data: bytes) -> bytes:
        return bytes(self.unpack(data, MAX_UNPACKED_SIZE, LIMIT_MOST))


# Deflate turns at most 1032 bytes into one: payloads this short unpack in one call, to
# at most CHUNK bytes.
_ZLIB_SAFE_SIZE = CHUNK // 1032


def _zlib_unpack(data: bytes, limit: int, why: str) -> bytes | bytearray:
    if len(data) <= _ZLIB_SAFE_SIZE:
        out = zlib.decompress(data)
        if len(out) > limit:
            raise too_large(limit, why)
        return out
    return unpack_stream(zlib.decompressobj(), data, limit, why)


# lzma's decoder holds its dictionary beside the output, as large as the stream asks: 8 MiB
# for what spoolq writes (preset 6), 64 MiB for xz's largest preset; a stream asking for
# more (up to 4 GiB) is refused.
_LZMA_MEMORY = 65 * 1024 * 1024


def _stream(make: Callable[[], bz2.BZ2Decompressor | lzma.LZMADecompressor]) -> _Unpack:
    """``unpack`` of bz2 or lzma (formats that can shrink data a million-fold)."""
    def unpack(data: bytes, limit: int, why: str) -> bytes | bytearray:
        return unpack_stream(make(), data, limit, why, b"")
    return unpack


def _lzma_unpacker() -> lzma.LZMADecompressor:
    return lzma.LZMADecompressor(memlimit=_LZMA_MEMORY)


def _lzo() -> Compressor:
    try:
        import lzo
    except ImportError as exc:
        raise ConfigurationError(
            "the lzo compressor needs the python-lzo package: pip install 'spoolq[lzo]'"
        ) from exc

    def unpack(data: bytes, limit: int, why: str) -> bytes:
        # python-lzo's header: one method byte, then the size as 4 bytes big endian; lzo
        # allocates that much, and fails unless the data make exactly that.
        check_declared(int.from_bytes(data[1:5], "big"), limit, why)
        return bytes(lzo.decompress(data))

    return _Module("lzo", lzo.compress, unpack)


SERIALIZERS: dict[str, tuple[int, Callable[[], Serializer]]] = {
    "raw": (1, _Raw),
    "cbor": (2, _Cbor),
    "pickle": (3, _Pickle),
    "json": (4, _Json),
}
COMPRESSORS: dict[str, tuple[int, Callable[[], Compressor]]] = {
    "none": (0, _NoCompression),
    "zstd": (1, _Zstd),
    "zlib": (2, lambda: _Module("zlib", zlib.compress, _zlib_unpack)),
    "bz2": (3, lambda: _Module("bz2", bz2.compress, _stream(bz2.BZ2Decompressor))),
    "lzma": (4, lambda: _Module("lzma", lzma.compress, _stream(_lzma_unpacker))),
    "lzo": (5, _lzo),
    "zstd-dict": (6, ZstdDictCompressor),
}
