"""Codec: custom codecs named like built-ins, odd compressors, damaged and hostile records,
dictionary training edge cases."""

from __future__ import annotations

import json
import pickle
import zlib
from pathlib import Path

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
