"""A compressed record unpacks to no more than the raw size stored with it: one that would
unpack further is refused as soon as it passes that size, holding about that much memory
(not the whole bomb, nor twice it), and it is decompressed once, however it is read."""

from __future__ import annotations

import bz2
import logging
import lzma
import struct
import sys
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import zstandard

import spoolq
from spoolq.codec import COMPRESSORS, Codec
from spoolq.engines import open_engine

MIB = 1 << 20
BOMB = 32 * MIB
"""What the hostile records unpack to: far more than the raw size stored with them."""
MARGIN = 3 * MIB
"""What a reader may hold beyond the raw size while unpacking (a step of 1 MiB, twice)."""
DECODER = {"lzma": 8 * MIB + MIB // 8}
"""What a format's decoder holds besides: lzma its dictionary, 8 MiB for preset 6."""

STREAMS: dict[str, Callable[[], Any]] = {
    "zlib": lambda: zlib.compressobj(9),
    "bz2": lambda: bz2.BZ2Compressor(9),
    "lzma": lzma.LZMACompressor,
}


def _stream(name: str, size: int, chunk: bytes = bytes(MIB)) -> bytes:
    """``size`` bytes of ``chunk`` repeated, compressed with ``name`` a piece at a time."""
    packer = STREAMS[name]()
    parts = [packer.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join(parts) + packer.flush()


def _zstd(size: int) -> bytes:
    packer = zstandard.ZstdCompressor().compressobj(size=size)
    return b"".join(packer.compress(bytes(MIB)) for _ in range(size // MIB)) + packer.flush()


def _lzo(size: int) -> bytes:
    lzo = pytest.importorskip("lzo")
    return bytes(lzo.compress(bytes(size)))


def _record(comp: str, payload: bytes, ser_id: int = 2) -> bytes:
    """A record of compressor ``comp`` with a sound checksum, as a hostile writer could
    make one (serializer cbor unless ``ser_id`` says otherwise)."""
    head = bytes([1, ser_id, COMPRESSORS[comp][0]])
    return head + struct.pack("<I", zlib.crc32(head + payload)) + payload


def _bomb(comp: str, size: int = BOMB) -> bytes:
    if comp in STREAMS:
        return _record(comp, _stream(comp, size))
    return _record(comp, _zstd(size) if comp == "zstd" else _lzo(size))


def _peak(call: Callable[[], Any]) -> tuple[int, Any]:
    """The most memory Python held at once, beyond what it held before, during ``call``;
    and what the call returned (or raised)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        try:
            outcome: Any = call()
        except Exception as exc:
            outcome = exc
        return tracemalloc.get_traced_memory()[1] - before, outcome
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("comp", ["zlib", "bz2", "lzma", "zstd", "lzo"])
@pytest.mark.parametrize("raw_size", [1000, 8 * MIB])
def test_a_record_is_refused_once_it_unpacks_beyond_its_raw_size(
        comp: str, raw_size: int) -> None:
    record = _bomb(comp)
    peak, outcome = _peak(lambda: Codec().decode(record, 5, raw_size=raw_size))
    assert isinstance(outcome, spoolq.CorruptError), outcome
    assert str(outcome).startswith("record 5 could not be decompressed: the payload ")
    assert f"{raw_size} bytes" in str(outcome) or f"{raw_size}," in str(outcome)
    assert "the raw size stored with the record" in str(outcome)
    limit = raw_size + raw_size // 4 + MARGIN + DECODER.get(comp, 0)
    assert peak < limit, f"{comp}: held {peak / MIB:.1f} MiB"


@pytest.mark.parametrize("dict_size", [64 * MIB + 1, 0xFFFF_FFFF])
def test_an_lzma_stream_asking_for_a_dictionary_beyond_xz_presets_is_refused(
        dict_size: int) -> None:
    # .lzma's header (which the xz decoder reads too) names the dictionary to allocate.
    stream = bytearray(lzma.compress(b"spool " * 100, format=lzma.FORMAT_ALONE))
    stream[1:5] = struct.pack("<I", dict_size)
    peak, outcome = _peak(lambda: Codec().decode(_record("lzma", bytes(stream)), 4,
                                                 raw_size=600))
    assert isinstance(outcome, spoolq.CorruptError), outcome
    assert str(outcome).startswith("record 4 could not be decompressed")
    assert peak < MIB, f"held {peak / MIB:.1f} MiB"
    # xz's largest preset (64 MiB) reads, as 8 MiB does.
    for preset in (6, 9):
        record = _record("lzma", lzma.compress(b"x" * 1000, preset=preset), ser_id=1)
        assert Codec("raw", "lzma").decode(record, raw_size=1000) == b"x" * 1000


@pytest.mark.parametrize("comp", ["zlib", "bz2", "lzma"])
def test_a_large_record_unpacks_within_about_its_own_size(comp: str) -> None:
    # A sound record of many unpacking steps: the reader holds its bytes about once,
    # not once in pieces and again joined.
    item = bytes(range(256)) * (24 * MIB // 256)
    record, raw_size = Codec("raw", comp).encode(item)
    assert len(record) < raw_size // 10
    peak, outcome = _peak(lambda: Codec("raw", comp).decode(record, raw_size=raw_size))
    assert outcome == item
    # the item itself (bytes) plus the buffer it was unpacked into, and a step
    limit = 2 * raw_size + raw_size // 4 + MARGIN + DECODER.get(comp, 0)
    assert peak < limit, f"{comp}: held {peak / MIB:.1f} MiB"


@pytest.mark.parametrize("comp", ["zlib", "bz2", "lzma"])
@pytest.mark.parametrize("serializer", ["cbor", "json", "pickle", "raw"])
def test_records_of_many_unpacking_steps_decode_with_and_without_their_raw_size(
        comp: str, serializer: str) -> None:
    item: Any = "spool " * (3 * MIB // 6) if serializer != "raw" else b"spool " * (MIB // 2)
    codec = Codec(serializer, comp)
    record, raw_size = codec.encode(item)
    assert record[2] == COMPRESSORS[comp][0] and raw_size > 2 * MIB
    assert codec.decode(record) == item
    assert codec.decode(record, 1, raw_size=raw_size) == item
    assert codec.decode_all([record, record]) == [item, item]
    assert codec.decode_each([record], [1], [raw_size]) == ([item], {})
    # Read by a codec of another compressor (the general path) too.
    assert Codec(serializer, "none").decode(record, 1, raw_size=raw_size) == item
    with pytest.raises(spoolq.CorruptError, match=f"more than {raw_size - 1} bytes, the raw "
                       "size stored with the record"):
        codec.decode(record, 1, raw_size=raw_size - 1)


class Text:
    """A custom serializer that insists on bytes, as a custom one may."""

    name = "text"

    def dumps(self, item: str) -> bytes:
        return item.encode()

    def loads(self, data: bytes) -> str:
        assert type(data) is bytes, type(data)
        return data.decode()


def test_a_custom_serializer_is_handed_bytes_however_many_steps_unpacked_them() -> None:
    codec = Codec(Text(), "zlib")
    item = "spool " * MIB
    record, raw_size = codec.encode(item)
    assert codec.decode(record, raw_size=raw_size) == item


@pytest.mark.parametrize("comp", sorted(STREAMS))
def test_a_stream_cut_short_after_many_steps_is_corrupt(comp: str) -> None:
    payload = _stream(comp, 8 * MIB, bytes(range(256)) * 4096)
    cut = _record(comp, payload[: len(payload) // 2], ser_id=1)
    for raw_size in (None, 8 * MIB):
        with pytest.raises(spoolq.CorruptError, match="could not be decompressed"):
            Codec("raw", comp).decode(cut, raw_size=raw_size)


class Unpacks:
    """Counts the decompressions of zlib, bz2 and lzma in this thread, by the objects
    that did them (a decompressor object unpacks in steps) and zlib's one-call ones."""

    KINDS = (type(zlib.decompressobj()), bz2.BZ2Decompressor, lzma.LZMADecompressor)

    def __init__(self) -> None:
        self.unpackers: list[object] = []  # held, so that no id is used twice
        self.calls = 0

    def __enter__(self) -> Unpacks:
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "c_call" or getattr(arg, "__name__", None) != "decompress":
            return
        owner = getattr(arg, "__self__", None)
        if owner is zlib:
            self.calls += 1
        elif isinstance(owner, self.KINDS) and not any(o is owner for o in self.unpackers):
            self.unpackers.append(owner)
            self.calls += 1


def _queue_with_a_bomb(path: str, comp: str, raw_size: int) -> None:
    """A queue file of compressor ``comp`` holding an item, a bomb stored with
    ``raw_size``, and another item."""
    with spoolq.SyncQueue.create(path, compressor=comp) as q:
        q.put({"n": 1})
    engine = open_engine(path)
    try:
        engine.append("default", [_bomb(comp, 16 * MIB)], [raw_size], time.time())
    finally:
        engine.close()
    with spoolq.SyncQueue.create(path, compressor=comp) as q:
        q.put({"n": 2})


TAKES: dict[str, Callable[[spoolq.SyncQueue[Any]], list[Any]]] = {
    "get_many": lambda q: q.get_many(None),
    "get": lambda q: [q.get(timeout=0), q.get(timeout=0)],
    "lease_many": lambda q: [m.item for m in q.lease_many(10, ttl=60, timeout=0)],
}


@pytest.mark.parametrize("comp", sorted(STREAMS))
@pytest.mark.parametrize("take", sorted(TAKES))
def test_a_bomb_in_a_queue_is_decompressed_once_and_set_aside_at_its_raw_size(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, comp: str, take: str) -> None:
    path = str(tmp_path / "q.sqlite")
    _queue_with_a_bomb(path, comp, 2000)
    with spoolq.SyncQueue.create(path, compressor=comp) as q:
        with caplog.at_level(logging.ERROR, logger="spoolq"), Unpacks() as unpacks:
            peak, got = _peak(lambda: TAKES[take](q))
        assert got == [{"n": 1}, {"n": 2}], got
        assert unpacks.calls == 1, f"the bomb was decompressed {unpacks.calls} times"
        assert peak < MARGIN + MIB + DECODER.get(comp, 0), f"held {peak / MIB:.1f} MiB"
        assert q.stats["dead"] == 1
    assert "more than 2000 bytes, the raw size stored with the record" in caplog.text


def test_peek_decompresses_a_bomb_once(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    _queue_with_a_bomb(path, "zlib", 2000)
    with spoolq.SyncQueue.create(path, compressor="zlib") as q, Unpacks() as unpacks, \
            pytest.raises(spoolq.CorruptError, match="more than 2000 bytes, the raw size"):
        q.peek(1, offset=1)
    assert unpacks.calls == 1


def _items(n: int) -> Iterator[dict[str, Any]]:
    for k in range(n):
        yield {"n": k, "text": "spool " * 40}


def test_records_whose_raw_size_is_their_serialized_size_all_decode(tmp_path: Path) -> None:
    # What every put stores: the serialized size, which the unpacked payload matches.
    path = str(tmp_path / "q.sqlite")
    for comp in ("zstd", "zlib", "bz2", "lzma", "zstd-dict"):
        with spoolq.SyncQueue.create(path, name=comp, compressor=comp) as q:
            q.put_many(list(_items(300)))
            assert q.get_many(150) == list(_items(150))
            assert [q.get() for _ in range(150)] == list(_items(300))[150:]
            assert q.stats["dead"] == 0


def test_a_short_zstd_frame_is_refused_once_unpacked_beyond_its_raw_size() -> None:
    # Too short to declare more than a few MiB: unpacked without a look at its header
    # first, then refused all the same.
    frame = zstandard.ZstdCompressor().compress(bytes(MIB))
    assert len(frame) < 128
    with pytest.raises(spoolq.CorruptError, match=r"declares 1048576 bytes, more than 1000, "
                       "the raw size stored with the record"):
        Codec().decode(_record("zstd", frame), raw_size=1000)
    assert Codec().decode(_record("zstd", frame, ser_id=1), raw_size=MIB) == bytes(MIB)


def test_a_zstd_dict_record_declaring_more_than_its_raw_size_is_refused_unread() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(
        3, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_content_size=True)
    frame = zstandard.ZstdCompressor(compression_params=params).compress(bytes(16 * MIB))
    record = _record("zstd-dict", b"\x00" + frame)
    peak, outcome = _peak(lambda: Codec().decode(record, 2, raw_size=1000))
    assert isinstance(outcome, spoolq.CorruptError), outcome
    assert str(outcome) == ("record 2 could not be decompressed: the payload declares "
                            f"{16 * MIB} bytes, more than 1000, the raw size stored with "
                            "the record")
    assert peak < MIB
    assert Codec("raw").decode(_record("zstd-dict", b"\x00" + frame, ser_id=1),
                               raw_size=16 * MIB) == bytes(16 * MIB)
