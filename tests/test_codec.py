"""Codec: every serializer x compressor, the threshold, damage detection, errors."""

from __future__ import annotations

import json
import marshal
import zlib
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq.codec import COMPRESSORS, HEADER_SIZE, Codec, record_codec_names
from spoolq.engines import open_engine
from spoolq.engines.base import dead_queue_name

try:
    import lzo  # noqa: F401
    HAVE_LZO = True
except ImportError:
    HAVE_LZO = False

ITEMS: dict[str, list[Any]] = {
    "cbor": [None, 1, "é", b"\x00", [1, 2], {"k": [1.5, None]}, "long " * 100],
    "pickle": [None, 1, ("tuple",), {1, 2}, {"k": b"v"}, "long " * 100],
    "json": [None, 1, "é", [1, 2], {"k": [1.5, None]}, "long " * 100],
    "raw": [b"", b"\x00\xff", b"long " * 100],
}
COMPRESSOR_NAMES = [
    pytest.param(name, marks=pytest.mark.skipif(
        name == "lzo" and not HAVE_LZO,
        reason="python-lzo is not installed (pip install 'spoolq[lzo]'; needs liblzo2-dev)"))
    for name in COMPRESSORS
]


@pytest.mark.parametrize("compressor", COMPRESSOR_NAMES)
@pytest.mark.parametrize("serializer", sorted(ITEMS))
def test_round_trip_every_serializer_and_compressor(serializer: str, compressor: str) -> None:
    codec = Codec(serializer, compressor)
    for item in ITEMS[serializer]:
        record, raw_size = codec.encode(item)
        assert codec.decode(record) == item
        assert raw_size == len(codec.dumps(item))
        assert record_codec_names(record)[0] == serializer


def test_small_payloads_are_stored_uncompressed() -> None:
    codec = Codec("raw", "zstd", threshold=128)
    small, _ = codec.encode(b"a" * 127)
    big, _ = codec.encode(b"a" * 1000)
    assert record_codec_names(small) == ("raw", "none")
    assert small[HEADER_SIZE:] == b"a" * 127
    assert record_codec_names(big) == ("raw", "zstd")
    assert len(big) < 100


def test_incompressible_payload_is_stored_plain() -> None:
    codec = Codec("raw", "zlib", threshold=0)
    data = bytes(range(256)) * 2
    noise = zlib.compress(data, 9) * 3
    record, _ = codec.encode(noise)
    assert codec.decode(record) == noise


def test_record_from_another_compressor_still_decodes() -> None:
    record, _ = Codec("cbor", "lzma").encode("spool " * 100)
    assert Codec("cbor", "zstd").decode(record) == "spool " * 100


def test_damaged_record_is_detected_naming_it() -> None:
    codec = Codec()
    record, _ = codec.encode({"payload": "x" * 500})
    for pos in (0, 3, HEADER_SIZE + 2, len(record) - 1):
        damaged = bytearray(record)
        damaged[pos] ^= 0x40
        with pytest.raises(spoolq.CorruptError, match="record 42"):
            codec.decode(bytes(damaged), 42)
    with pytest.raises(spoolq.CorruptError, match="truncated"):
        codec.decode(record[:4], 42)


def test_unserializable_item_names_a_serializer_that_would_take_it() -> None:
    with pytest.raises(spoolq.SerializationError, match="pickle"):
        Codec("cbor").encode(object())
    with pytest.raises(spoolq.SerializationError, match="raw serializer takes bytes"):
        Codec("raw").encode("text")
    with pytest.raises(TypeError):
        Codec("json").encode(b"bytes")


def test_pickled_record_is_refused_by_a_non_pickle_codec() -> None:
    record, _ = Codec("pickle").encode({"x": 1})
    with pytest.raises(spoolq.SerializationError, match="serializer='pickle'"):
        Codec("cbor").decode(record)


class Upper:
    """A custom serializer: text stored upper-case."""

    name = "upper"

    def dumps(self, obj: Any) -> bytes:
        return str(obj).upper().encode()

    def loads(self, data: bytes) -> Any:
        return data.decode()


class PlainZlib:
    name = "plain-zlib"

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decompress(self, data: bytes) -> bytes:
        return zlib.decompress(data)


def test_custom_serializer_and_compressor_objects() -> None:
    codec = Codec(Upper(), PlainZlib(), threshold=0)
    record, _ = codec.encode("abc" * 50)
    assert record_codec_names(record) == ("upper", "plain-zlib")
    assert codec.decode(record) == "ABC" * 50
    with pytest.raises(spoolq.SerializationError, match="plain-zlib"):
        Codec().decode(record)


def test_module_serializers_work_as_custom_objects() -> None:
    codec = Codec(marshal, zlib)
    record, _ = codec.encode({"a": 1})
    assert record_codec_names(record) == ("marshal", "none")
    assert codec.decode(record) == {"a": 1}
    with pytest.raises(spoolq.SerializationError, match="returned str"):
        Codec(TextJson()).encode({"a": 1})


class TextJson:
    """A custom serializer that wrongly returns text."""

    def dumps(self, obj: Any) -> str:
        return json.dumps(obj)

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


def test_bad_codec_settings() -> None:
    with pytest.raises(spoolq.ConfigurationError, match="unknown serializer"):
        Codec("yaml")
    with pytest.raises(spoolq.ConfigurationError, match="compress"):
        Codec("cbor", 42)
    with pytest.raises(spoolq.ConfigurationError):
        Codec(threshold=-1)


@pytest.mark.parametrize("codec", [
    Codec("cbor", "zstd"), Codec("json", "none"), Codec("raw", "zlib", threshold=0),
    Codec(Upper(), PlainZlib()), Codec(Upper(), "none"), Codec("cbor", "zstd-dict"),
], ids=["cbor-zstd", "json-none", "raw-zlib-always", "custom-custom", "custom-none",
        "cbor-zstd-dict"])
def test_encode_many_writes_what_encode_writes(codec: Codec) -> None:
    items: list[Any] = (["short", "long " * 100, "x" * 127, "x" * 128] if codec.serializer_name
                        != "raw" else [b"short", b"long " * 100])
    records, sizes = codec.encode_many(items)
    assert (records, sizes) == tuple(map(list, zip(*map(codec.encode, items), strict=True)))
    assert [codec.decode(r) for r in records] == [codec.decode(codec.encode(i)[0])
                                                  for i in items]


def test_encode_many_refuses_the_whole_batch_naming_the_item() -> None:
    with pytest.raises(spoolq.SerializationError, match="cannot encode object"):
        Codec("json").encode_many([1, object(), 2])
    with pytest.raises(spoolq.SerializationError, match="returned str"):
        Codec(TextJson()).encode_many([{"a": 1}])


def test_decode_all_takes_own_records_and_hands_any_other_batch_back() -> None:
    codec = Codec("cbor", "zstd")
    items: list[Any] = ["short", "long " * 100, {"k": [1, 2]}]
    records = codec.encode_many(items)[0]
    assert codec.decode_all(records) == items
    assert codec.decode_all([]) == []
    damaged = bytearray(records[1])
    damaged[-1] ^= 0x40
    foreign = Codec("cbor", "lzma").encode("long " * 100)[0]
    for odd in (bytes(damaged), foreign, records[0][:4], Codec("json").encode(1)[0]):
        # One record this codec did not write as it writes, or damaged: the whole batch
        # goes back to decode(), which reads each one or names the failure.
        assert codec.decode_all([records[0], odd, records[2]]) is None
    assert codec.decode(foreign) == "long " * 100


class LockedZlib:
    """A custom compressor that can read back only while it is unlocked (as one whose
    key lives elsewhere)."""

    name = "locked-zlib"

    def __init__(self, unlocked: bool = True) -> None:
        self.unlocked = unlocked

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decompress(self, data: bytes) -> bytes:
        if not self.unlocked:
            raise PermissionError("the key is not loaded")
        return zlib.decompress(data)


class LockedUpper(Upper):
    """A custom serializer that can read back only while it is unlocked."""

    name = "locked-upper"

    def __init__(self, unlocked: bool = True) -> None:
        self.unlocked = unlocked

    def loads(self, data: bytes) -> Any:
        if not self.unlocked:
            raise PermissionError("the key is not loaded")
        return data.decode()


def test_a_failing_custom_decompress_is_the_compressor_s_failure_not_damage() -> None:
    record, _ = Codec("json", LockedZlib(), threshold=0).encode("abc" * 50)
    with pytest.raises(spoolq.SerializationError,
                       match="record 7 could not be decompressed by the custom compressor "
                             "'locked-zlib': the key is not loaded") as raised:
        Codec("json", LockedZlib(unlocked=False)).decode(record, 7)
    assert not isinstance(raised.value, spoolq.CorruptError)
    assert isinstance(raised.value.__cause__, PermissionError)
    # As a failing custom serializer is reported.
    record, _ = Codec(LockedUpper(), "none").encode("abc")
    with pytest.raises(spoolq.SerializationError, match="the key is not loaded"):
        Codec(LockedUpper(unlocked=False), "none").decode(record, 7)


@pytest.mark.parametrize("failing", ["compressor", "serializer"])
def test_a_record_a_custom_codec_fails_to_read_goes_to_the_dead_letters_naming_it(
        tmp_path: Path, failing: str) -> None:
    path = tmp_path / "q.sqlite"

    def codecs(unlocked: bool) -> dict[str, Any]:
        if failing == "compressor":
            return {"serializer": "json", "compressor": LockedZlib(unlocked)}
        return {"serializer": LockedUpper(unlocked), "compressor": "none"}

    with spoolq.SyncQueue.create(path, **codecs(True)) as q:
        q.put("abc" * 100)
    with spoolq.SyncQueue.create(path, max_attempts=3, **codecs(False)) as q:
        with pytest.raises(spoolq.Empty):
            q.get(timeout=0)
        assert (q.stats["count"], q.stats["dead"]) == (0, 1)
    engine = open_engine(path, read_only=True)
    try:
        (dead,) = engine.peek(dead_queue_name("default"), 10)
    finally:
        engine.close()
    assert dead.reason is not None
    assert dead.reason.startswith("cannot be decoded: record 1 could not be ")
    assert "the key is not loaded" in dead.reason
    if failing == "compressor":
        assert "custom compressor 'locked-zlib'" in dead.reason
