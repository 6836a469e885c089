"""Codec: custom codecs named like built-ins, odd compressors, damaged and hostile records,
dictionary training edge cases."""

from __future__ import annotations

import json
import pickle
import zlib
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import SyncQueue
from spoolq.codec import Codec, record_codec_names


class NamedZstd:
    """A custom compressor that claims a built-in's name."""

    name = "zstd"

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decompress(self, data: bytes) -> bytes:
        return zlib.decompress(data)


def test_stdlib_module_named_like_a_builtin_is_the_builtin(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with SyncQueue.create(path, compressor=zlib) as q:
        q.put("x" * 500)
    with SyncQueue.create(path) as q:  # reopened by the name the file stores
        assert q.stats["compressor"] == "zlib"
        assert q.get(timeout=1) == "x" * 500
    record = Codec(pickle, zlib).encode({"k": "v" * 300})[0]
    assert record_codec_names(record) == ("pickle", "zlib")
    assert Codec("pickle", "none").decode(record) == {"k": "v" * 300}
    assert Codec(json).decode(Codec(json).encode({"a": 1})[0]) == {"a": 1}


def test_custom_object_with_a_builtin_name_is_refused() -> None:
    with pytest.raises(spoolq.ConfigurationError, match="cannot be named 'zstd'"):
        Codec("cbor", NamedZstd())


class OddCompressor:
    """A custom compressor whose compress returns ``result`` (or raises it)."""

    name = "odd"

    def __init__(self, result: object) -> None:
        self.result = result

    def compress(self, data: bytes) -> Any:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    def decompress(self, data: bytes) -> Any:
        return self.result


@pytest.mark.parametrize("result", [None, "text", 5, ValueError("no room")],
                         ids=["none", "str", "int", "raises"])
def test_failing_compressor_is_a_serialization_error_naming_it(result: object) -> None:
    codec = Codec("raw", OddCompressor(result), threshold=0)
    with pytest.raises(spoolq.SerializationError, match="odd compressor"):
        codec.encode(b"x" * 200)
    with pytest.raises(spoolq.SerializationError, match="odd compressor"):
        codec.encode_many([b"x" * 200])


def test_compressor_returning_a_bytearray_is_taken() -> None:
    codec = Codec("raw", OddCompressor(bytearray(b"\x01")), threshold=0)
    record, _ = codec.encode(b"x" * 200)
    assert record_codec_names(record) == ("raw", "odd")


@pytest.mark.parametrize("result", [3, [120, 121]], ids=["int", "list"])
def test_decompressor_returning_no_bytes_is_refused_not_made_into_bytes(result: object) -> None:
    writer = Codec("raw", OddCompressor(b"\x01"), threshold=0)
    record, _ = writer.encode(b"x" * 200)
    reader = Codec("raw", OddCompressor(result), threshold=0)
    with pytest.raises(spoolq.SerializationError, match=f"odd compressor returned "
                       f"{type(result).__name__}"):
        reader.decode(record, 9)
