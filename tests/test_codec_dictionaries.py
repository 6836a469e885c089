"""Codec and zstd dictionaries: training off the event loop, damaged dictionaries, items
the serializer would write but could not read back."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import zstandard

import spoolq
from spoolq.engines import Engine, StoredRecord, open_engine
from spoolq.zdict import DICT_SIZE, DICTIONARY_QUEUE, SAMPLE_COUNT, damaged_dictionaries

from .test_zstd_dict import damage_first_dictionary


def _documents(n: int, rows: int = 500, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "order", "user", "item", "price", "qty"]
    return [json.dumps({"n": i, "rows": [{"k": rnd.choice(words), "v": rnd.randint(0, 10**6)}
                                         for _ in range(rows)]}).encode() for i in range(n)]


def test_training_a_dictionary_on_the_memory_engine_does_not_hold_up_the_event_loop() -> None:
    # 100 samples of 14 KiB are enough to train from; training them takes tens of ms.
    docs = _documents(101)

    async def main() -> None:
        q = await spoolq.Queue.create(":memory:", serializer="raw", compressor="zstd-dict")
        try:
            slowest = 0.0
            for doc in docs[:100]:
                start = time.perf_counter()
                await q.put(doc)
                slowest = max(slowest, time.perf_counter() - start)
            engine = q._core.engine
            # What training the samples costs on this machine now: a put that trained on
            # the loop would hold it that long. A loaded machine slows both alike.
            start = time.perf_counter()
            zstandard.train_dictionary(DICT_SIZE, docs[:100])
            training = time.perf_counter() - start
            assert slowest < max(0.02, training / 2), (
                f"a put held the event loop for {slowest * 1000:.0f} ms; training takes "
                f"{training * 1000:.0f} ms")
            deadline = time.monotonic() + 5
            while not engine.peek(DICTIONARY_QUEUE, 1):  # stored by a put once trained
                assert time.monotonic() < deadline, "the dictionary was never stored"
                await asyncio.sleep(0.01)
                await q.put(docs[100])
            await q.put(docs[100])
            tail = engine.peek("default", 1, offset=q.qsize() - 1)[0].data
            assert spoolq.codec.record_codec_names(tail)[1] == "zstd-dict"
            assert spoolq.codec.record_dictionary(tail) == 1
            got = [await q.get() for _ in range(q.qsize())]
            assert got[:100] == docs[:100] and set(got[100:]) == {docs[100]}
        finally:
            await q.aclose()

    asyncio.run(main())


def _events(n: int, seed: int = 7) -> list[dict[str, object]]:
    rnd = random.Random(seed)
    return [{"event": rnd.choice(["click", "view", "buy"]), "user": f"user-{rnd.randint(1, 90)}",
             "path": f"/products/{rnd.randint(1, 50)}", "n": i} for i in range(n)]


def _as_an_earlier_release_with_a_damaged_dictionary(path: str) -> None:
    """Drop the dictionary's checksum (files of earlier releases have none) and flip a
    byte of the dictionary's header, as a bad sector would."""
    damage_first_dictionary(path, 20, 0xFF, drop_checksum=True)


def test_a_damaged_dictionary_without_a_checksum_does_not_fail_every_put(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "q.sqlite")
    items = _events(SAMPLE_COUNT + 100)
    with spoolq.SyncQueue.create(path, compressor="zstd-dict") as q:
        q.put_many(items[:SAMPLE_COUNT])
        q.put_many(items[SAMPLE_COUNT:])  # compressed with dictionary 1
    _as_an_earlier_release_with_a_damaged_dictionary(path)
    more = _events(50, seed=8)
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(more)  # compressed without the damaged dictionary
        q.put(more[0])
        got = q.get_many(None)
        assert got[-51:] == [*more, more[0]]
        assert got[:-51] == items[:len(got) - 51]  # never a wrong item
        assert q.stats["dead"] == len(items) + 51 - len(got) > 0  # those needing dictionary 1
    assert "zstd dictionary 1 of the file is damaged: zstd cannot load it" in caplog.text
    engine = open_engine(path, read_only=True)
    try:
        assert damaged_dictionaries(engine) == [1]
    finally:
        engine.close()


class FailingDictionaryReads:
    """Delegates to a real engine; while ``failing``, reading the file's zstd dictionaries
    raises an EngineError, as a disk I/O error would."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.failing = False

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        if self.failing and queue == DICTIONARY_QUEUE:
            raise spoolq.EngineError("disk I/O error")
        return self._inner.peek(queue, n, offset)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_records_taken_when_the_dictionaries_cannot_be_read_are_not_lost(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    items = _events(SAMPLE_COUNT + 100)
    with spoolq.SyncQueue.create(path, compressor="zstd-dict") as writer:
        writer.put_many(items[:SAMPLE_COUNT - 1])
        engine = FailingDictionaryReads(open_engine(path))
        # Opened before the writer trains its dictionary: the reader does not have it.
        with spoolq.SyncQueue.create(path, engine=engine) as reader:
            writer.put(items[SAMPLE_COUNT - 1])  # the writer trains its dictionary
            writer.put_many(items[SAMPLE_COUNT:])  # these need it
            engine.failing = True
            got: list[Any] = []
            while len(got) < SAMPLE_COUNT:  # the reader may count the writer's puts late
                got += reader.get_many(None, timeout=5)
            engine.failing = False
            assert got == items[:SAMPLE_COUNT]
            dead = reader.peek(200, dead=True)  # nothing lost: set aside, and readable
    assert dead == items[SAMPLE_COUNT:]


class Named:
    """A custom compressor (zlib) with the given name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decompress(self, data: bytes) -> bytes:
        return zlib.decompress(data)


def test_a_codec_name_that_is_not_valid_text_is_a_configuration_error() -> None:
    with pytest.raises(spoolq.ConfigurationError, match="codec name 'zlib-\\\\udcff'"):
        spoolq.Codec("cbor", Named("zlib-\udcff"))


class Frame(bytes):
    """What some libraries return: a subclass of bytes."""


class FrameZlib(Named):
    def compress(self, data: bytes) -> bytes:
        return Frame(zlib.compress(data))


def test_a_compressor_returning_a_bytes_subclass_is_taken() -> None:
    codec = spoolq.Codec("raw", FrameZlib("frame-zlib"), threshold=0)
    record, _ = codec.encode(b"spool " * 50)
    assert type(record) is bytes
    assert spoolq.codec.record_codec_names(record) == ("raw", "frame-zlib")
    assert codec.decode(record) == b"spool " * 50


def test_records_of_a_compressor_whose_package_is_missing_are_set_aside_not_lost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "q.sqlite")
    items = ["spool " * 100, "queue " * 100]
    with spoolq.SyncQueue.create(path, compressor="lzo") as q:  # written where python-lzo is
        q.put_many(items)
        q.put("short")
    # Read where it is not installed.
    monkeypatch.setitem(sys.modules, "lzo", None)
    monkeypatch.setattr(spoolq.codec, "_decompressors", {})
    with spoolq.SyncQueue.create(path, compressor="zstd") as q:
        assert q.get_many(None) == ["short"]  # stored uncompressed
        assert q.stats["dead"] == 2
    assert caplog.text.count("cannot be decoded: the lzo compressor needs the python-lzo "
                             "package: pip install 'spoolq[lzo]'") == 2
    monkeypatch.undo()
    with spoolq.SyncQueue.create(path) as q:  # back where python-lzo is: all readable
        assert q.peek(5, dead=True) == items


def test_an_item_nested_deeper_than_cbor2_reads_by_default_comes_back(tmp_path: Path) -> None:
    item: Any = "core"
    for _ in range(2000):
        item = [item, {"depth": 1}]
    with spoolq.SyncQueue.create(str(tmp_path / "q.sqlite")) as q:
        q.put(item)
        got = q.get(timeout=1)
        assert q.stats["dead"] == 0
    for _ in range(2000):  # == would recurse once per level
        assert isinstance(got, list) and got[1] == {"depth": 1}
        got = got[0]
    assert got == "core"


class _Shout:
    name = "shout"

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return str(obj).upper().encode()

    @staticmethod
    def loads(data: bytes) -> Any:
        return data.decode()


class _Reverse:
    name = "reverse"

    @staticmethod
    def compress(data: bytes) -> bytes:
        return data[::-1]

    @staticmethod
    def decompress(data: bytes) -> bytes:
        return data[::-1]


def test_reopening_without_the_custom_codecs_it_was_made_with_names_what_to_pass(
        tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with spoolq.SyncQueue.create(path, serializer=_Shout(), compressor=_Reverse(),
                                 compress_threshold=0) as q:
        q.put("hello")
    with pytest.raises(spoolq.ConfigurationError,
                       match=r"created with the serializer 'shout'.*serializer= set to"):
        spoolq.SyncQueue.create(path)
    with pytest.raises(spoolq.ConfigurationError,
                       match=r"created with the compressor 'reverse'.*compressor= set to"):
        spoolq.SyncQueue.create(path, serializer=_Shout())
    with spoolq.SyncQueue.create(path, serializer=_Shout(), compressor=_Reverse()) as q:
        assert q.get() == "HELLO"


def test_a_bad_compress_threshold_is_named_and_checked_before_the_file(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with spoolq.SyncQueue.create(path) as q:
        q.put(1)
    for bad in (-5, True, 1.5):
        with pytest.raises(spoolq.ConfigurationError, match="compress_threshold"):
            spoolq.SyncQueue.create(path, compress_threshold=bad)  # type: ignore[arg-type]
    fresh = tmp_path / "fresh.sqlite"
    with pytest.raises(spoolq.ConfigurationError, match="compress_threshold"):
        spoolq.SyncQueue.create(fresh, compress_threshold=-1)
    assert not fresh.exists()


@pytest.mark.parametrize("codec", [{"serializer": "yaml"}, {"compressor": "brotli"},
                                   {"serializer": object()}])
def test_an_unknown_codec_creates_no_file(tmp_path: Path, codec: dict[str, Any]) -> None:
    fresh = tmp_path / "fresh.sqlite"
    with pytest.raises(spoolq.ConfigurationError):
        spoolq.SyncQueue.create(fresh, **codec)

    async def main() -> None:
        with pytest.raises(spoolq.ConfigurationError):
            await spoolq.Queue.create(fresh, **codec)

    asyncio.run(main())
    assert not fresh.exists()
