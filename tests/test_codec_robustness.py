"""Codec: custom codecs named like built-ins, odd compressors, damaged and hostile records,
dictionary training edge cases."""

from __future__ import annotations

import bz2
import json
import lzma
import pickle
import struct
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cbor2
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import spoolq
from spoolq import SyncQueue, zdict
from spoolq import _builtin_codecs as builtin_codecs
from spoolq import codec as codec_module
from spoolq.codec import HEADER_SIZE, Codec, record_codec_names
from spoolq.engines import open_engine
from spoolq.zdict import DICTIONARY_QUEUE, SAMPLE_COUNT


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


def _record(codec_id: int, payload: bytes) -> bytes:
    """A cbor record with compressor ``codec_id`` and a valid checksum, as a hostile
    writer (or peer) could make one."""
    head = bytes([1, 2, codec_id])
    return head + struct.pack("<I", zlib.crc32(head + payload)) + payload


def _zstd_bomb(size: int, **params: object) -> bytes:
    """A real zstd frame of ``size`` zero bytes, made without holding them in memory."""
    chunk = bytes(1 << 20)
    packer = zstandard.ZstdCompressor(**params).compressobj(size=size)  # type: ignore[arg-type]
    parts = [packer.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join(parts) + packer.flush()


def test_zstd_bomb_is_refused_before_it_is_decompressed() -> None:
    bomb = _zstd_bomb(zdict.MAX_UNPACKED_SIZE + (1 << 20))
    assert len(bomb) < 64 * 1024
    with pytest.raises(spoolq.CorruptError, match=r"record 5 could not be decompressed.*declares"):
        Codec().decode(_record(1, bomb), 5)
    assert Codec().decode_all([_record(1, bomb)]) is None


def test_zstd_dict_bomb_is_refused_before_it_is_decompressed() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(
        1, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_content_size=True)
    bomb = _zstd_bomb(zdict.MAX_UNPACKED_SIZE + (1 << 20), compression_params=params)
    with pytest.raises(spoolq.CorruptError, match="declares"):
        Codec().decode(_record(6, b"\x00" + bomb), 5)


class ZlibObject:
    """A custom compressor (any object with compress/decompress)."""

    name = "zlib-object"

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decompress(self, data: bytes) -> bytes:
        return zlib.decompress(data)


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> int:
    """Lower the decompression limit to 64 KiB so bombs of every format are cheap."""
    limit = 64 * 1024
    monkeypatch.setattr(zdict, "MAX_UNPACKED_SIZE", limit)
    monkeypatch.setattr(codec_module, "MAX_UNPACKED_SIZE", limit)
    monkeypatch.setattr(builtin_codecs, "MAX_UNPACKED_SIZE", limit)
    monkeypatch.setattr(builtin_codecs, "_ZLIB_SAFE_SIZE", limit // 1032)
    return limit


BOMB_MAKERS: dict[str, tuple[object, Callable[[bytes], bytes]]] = {
    "zstd": ("zstd", zstandard.compress),
    "zlib": ("zlib", zlib.compress),
    "bz2": ("bz2", bz2.compress),
    "lzma": ("lzma", lzma.compress),
    "custom": (ZlibObject(), ZlibObject().compress),
}
try:  # an optional extra (python-lzo)
    import lzo
except ImportError:
    pass
else:
    BOMB_MAKERS["lzo"] = ("lzo", lzo.compress)


@pytest.mark.parametrize("name", sorted(BOMB_MAKERS))
def test_record_decompressing_beyond_the_limit_is_corrupt(small_limit: int, name: str) -> None:
    compressor, pack = BOMB_MAKERS[name]
    codec = Codec("raw", compressor, threshold=0)
    bomb = pack(bytes(4 * small_limit))
    if name == "custom":
        names = bytes([len(ZlibObject.name)]) + ZlibObject.name.encode()
        head = bytes([1, 1, 255])
    else:
        names, head = b"", bytes([1, 1, codec_module.COMPRESSORS[name][0]])
    record = head + struct.pack("<I", zlib.crc32(head + names + bomb)) + names + bomb
    with pytest.raises(spoolq.CorruptError, match="record 3 could not be decompressed"):
        codec.decode(record, 3)
    # A payload of the limit itself is compressed, and decodes.
    fits, _ = codec.encode(bytes(small_limit))
    assert record_codec_names(fits)[1] != "none"
    assert codec.decode(fits) == bytes(small_limit)


@pytest.mark.parametrize("name", sorted(BOMB_MAKERS))
def test_payload_beyond_the_limit_is_stored_uncompressed_and_reads_back(
        small_limit: int, name: str) -> None:
    codec = Codec("raw", BOMB_MAKERS[name][0], threshold=0)
    item = bytes(small_limit + 1)
    record, size = codec.encode(item)
    assert size == small_limit + 1
    assert record_codec_names(record)[1] == "none"
    assert record[HEADER_SIZE:] == item
    assert codec.encode_many([item])[0] == [record]
    assert codec.decode(record) == item


def test_truncated_streams_stay_corrupt(small_limit: int) -> None:
    for name in ("zlib", "bz2", "lzma"):
        codec = Codec("raw", name, threshold=0)
        record, _ = codec.encode(bytes(small_limit))
        payload = record[HEADER_SIZE:-4]
        head = record[:3]
        cut = head + struct.pack("<I", zlib.crc32(head + payload)) + payload
        with pytest.raises(spoolq.CorruptError, match="could not be decompressed"):
            codec.decode(cut)


def _with_ids(record: bytes, ser_id: int, comp_id: int) -> bytes:
    """``record`` with other codec ids and a checksum that matches them."""
    head = bytes([record[0], ser_id, comp_id])
    rest = record[HEADER_SIZE:]
    return head + struct.pack("<I", zlib.crc32(head + rest)) + rest


def test_unknown_codec_ids_are_named_as_unknown() -> None:
    record, _ = Codec("cbor", "none").encode("item")
    with pytest.raises(spoolq.SerializationError,
                       match="record 8 names serializer id 9, which this version"):
        Codec().decode(_with_ids(record, 9, 0), 8)
    with pytest.raises(spoolq.SerializationError,
                       match="record 8 names compressor id 7, which this version"):
        Codec().decode(_with_ids(record, 2, 7), 8)


class Lower:
    """A custom serializer other than the one that wrote a record."""

    name = "lower"

    def dumps(self, obj: Any) -> bytes:
        return str(obj).lower().encode()

    def loads(self, data: bytes) -> Any:
        return data.decode()


def test_record_of_another_custom_codec_names_it_and_the_way_to_read_it() -> None:
    record, _ = Codec(Lower(), ZlibObject(), threshold=0).encode("ITEM" * 100)
    with pytest.raises(spoolq.SerializationError,
                       match="custom compressor 'zlib-object'; open the queue with that"):
        Codec(Lower()).decode(record)
    with pytest.raises(spoolq.SerializationError,
                       match="custom serializer 'lower'; open the queue with that"):
        Codec("cbor", ZlibObject()).decode(record)


class NoneSerializer:
    """A custom serializer that returns nothing for some items."""

    name = "sometimes-none"

    def dumps(self, obj: Any) -> Any:
        return None if isinstance(obj, dict) else str(obj).encode()

    def loads(self, data: bytes) -> Any:
        return data.decode()


def test_serializer_returning_no_bytes_names_the_item_type_and_writes_nothing(
        tmp_path: Path) -> None:
    with pytest.raises(spoolq.SerializationError, match="returned NoneType, not bytes, for a "
                       "dict item"):
        Codec(NoneSerializer()).encode({"a": 1})
    with SyncQueue.create(str(tmp_path / "q.sqlite"), serializer=NoneSerializer()) as q:
        with pytest.raises(spoolq.SerializationError, match="for a dict item"):
            q.put_many(["a", {"b": 2}, "c"])
        assert q.qsize() == 0
        q.put("d")
        assert q.get_many(None) == ["d"]


def test_record_bytes_are_as_docs_file_format_describes() -> None:
    item = {"id": 7, "text": "spool " * 50}
    payload = cbor2.dumps(item)
    # Built-in codecs: version, serializer id, compressor id, CRC-32 of those and the payload.
    record, raw_size = Codec("cbor", "none").encode(item)
    assert raw_size == len(payload)
    assert record == bytes([1, 2, 0]) + struct.pack("<I", zlib.crc32(bytes([1, 2, 0]) + payload)
                                                    ) + payload
    packed = Codec("cbor", "zlib").encode(item)[0]
    body = zlib.compress(payload)
    assert packed == bytes([1, 2, 2]) + struct.pack("<I", zlib.crc32(bytes([1, 2, 2]) + body)
                                                    ) + body
    # Custom codecs: their names, serializer's first, as a length byte and UTF-8, both
    # covered by the CRC; compressor 0 (and no compressor name) when stored plain.
    custom = Codec(Lower(), ZlibObject(), threshold=0).encode("ITEM" * 50)[0]
    names = b"\x05lower" + b"\x0bzlib-object"
    body = zlib.compress(b"item" * 50)
    head = bytes([1, 255, 255])
    assert custom == head + struct.pack("<I", zlib.crc32(head + names + body)) + names + body
    plain = Codec(Lower(), ZlibObject()).encode("short")[0]
    assert plain[:3] == bytes([1, 255, 0]) and plain[HEADER_SIZE:] == b"\x05lowershort"
    # Any record of built-in codecs decodes with a default Codec, except pickle.
    for serializer, compressor in [("cbor", "lzma"), ("json", "bz2"), ("raw", "zlib")]:
        value: Any = b"spool " * 50 if serializer == "raw" else item
        assert Codec().decode(Codec(serializer, compressor).encode(value)[0]) == value


def test_zstd_dict_records_are_as_docs_file_format_describes(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    items = [{"event": "view", "user": f"user-{i % 90}", "n": i} for i in range(SAMPLE_COUNT)]
    with SyncQueue.create(path, compressor="zstd-dict", compress_threshold=1000) as q:
        q.put_many(items)
        q.put(items[5])  # 16 bytes and more are compressed once the dictionary is there
    engine = open_engine(path, read_only=True)
    try:
        assert engine.get_meta("queue/default/zstd-dict") == b"1"
        dictionary = engine.peek(DICTIONARY_QUEUE, 10)[0].data
        record = engine.peek("default", 1, offset=len(items))[0].data
    finally:
        engine.close()
    assert record[:3] == bytes([1, 2, 6])
    assert record[HEADER_SIZE] == 1  # the dictionary's number
    frame = record[HEADER_SIZE + 1:]
    params = zstandard.get_frame_parameters(frame, format=zstandard.FORMAT_ZSTD1_MAGICLESS)
    assert params.dict_id == 0 and not params.has_checksum
    assert params.content_size == len(cbor2.dumps(items[5]))
    unpacker = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(dictionary),
                                          format=zstandard.FORMAT_ZSTD1_MAGICLESS)
    assert unpacker.decompress(frame) == cbor2.dumps(items[5])


CODECS = [("cbor", "zstd"), ("cbor", "zlib"), ("json", "lzma"), ("pickle", "bz2"),
          ("cbor", "none"), ("cbor", "zstd-dict")]
JSONABLE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=8),
    max_leaves=40)


@settings(max_examples=80, deadline=None)
@given(item=JSONABLE, which=st.sampled_from(CODECS), threshold=st.integers(0, 300))
def test_every_item_round_trips_through_encode_and_encode_many(
        item: Any, which: tuple[str, str], threshold: int) -> None:
    codec = Codec(*which, threshold=threshold)
    record, size = codec.encode(item)
    assert codec.decode(record) == item
    assert codec.encode_many([item, item]) == ([record, record], [size, size])
    assert codec.decode_all([record, record]) in ([item, item], None)


@settings(max_examples=100, deadline=None)
@given(item=JSONABLE, which=st.sampled_from(CODECS), data=st.data())
def test_a_damaged_record_never_decodes_and_never_raises_anything_else(
        item: Any, which: tuple[str, str], data: st.DataObject) -> None:
    codec = Codec(*which, threshold=0)
    record = bytearray(codec.encode(item)[0])
    if data.draw(st.booleans(), label="truncate"):
        damaged = bytes(record[:data.draw(st.integers(0, len(record) - 1), label="length")])
    else:
        for pos in data.draw(st.sets(st.integers(0, len(record) - 1), min_size=1, max_size=3),
                             label="positions"):
            record[pos] ^= data.draw(st.integers(1, 255), label="flip")
        damaged = bytes(record)
    with pytest.raises((spoolq.CorruptError, spoolq.SerializationError)):
        codec.decode(damaged, 1)
    assert codec.decode_all([damaged]) is None


@pytest.mark.parametrize("compressor", ["zstd", "zstd-dict"])
def test_one_codec_serves_many_threads_at_once(compressor: str) -> None:
    codec = Codec("cbor", compressor, threshold=0)
    items = [{"n": i, "text": f"record {i} " * (i % 40)} for i in range(400)]
    barrier = threading.Barrier(8)

    def work(offset: int) -> list[Any]:
        barrier.wait()
        mine = items[offset::8]
        records = [codec.encode(item)[0] for item in mine]
        if offset == 0 and codec.training_due:
            dictionary = codec.train()
            if dictionary is not None:
                codec.add_dictionary(1, dictionary, activate=True)
        records += codec.encode_many(mine)[0]
        return [codec.decode(record) for record in records]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for offset, decoded in enumerate(results):
        assert decoded == items[offset::8] * 2


def test_a_bytes_like_record_decodes_and_anything_else_is_named() -> None:
    codec = Codec()
    record, _ = codec.encode({"n": 1})
    assert codec.decode(bytearray(record)) == {"n": 1}
    assert codec.decode(memoryview(record)) == {"n": 1}
    with pytest.raises(TypeError, match="a record is bytes, not str"):
        codec.decode("not a record")  # type: ignore[arg-type]
