"""zstd with a dictionary trained from the queue's own records."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import zstandard
from click.testing import CliRunner

import spoolq
from spoolq import SyncQueue
from spoolq.cli import cli
from spoolq.codec import Codec, record_codec_names
from spoolq.engines import open_engine
from spoolq.zdict import (
    DICTIONARY_QUEUE,
    SAMPLE_COUNT,
    ZstdDictCompressor,
    checksum_key,
    load_dictionaries,
    train_dictionary,
)


def _events(n: int, seed: int = 7) -> list[dict[str, object]]:
    rnd = random.Random(seed)
    return [{"event": rnd.choice(["click", "view", "buy"]), "user": f"user-{rnd.randint(1, 90)}",
             "path": f"/products/{rnd.randint(1, 50)}", "n": i} for i in range(n)]


def test_dictionary_is_trained_stored_and_used(disk_path: str) -> None:
    items = _events(SAMPLE_COUNT + 500)
    with SyncQueue.create(disk_path, compressor="zstd-dict", max_attempts=1) as q:
        for start in range(0, len(items), 100):
            q.put_many(items[start:start + 100])
        ratio = q.stats["compression_ratio_pct"]
        assert ratio is not None and ratio > 0  # plain zstd saves nothing on these
        msg = q.lease_many(1)[0]
        q.nack(msg)  # max_attempts=1: a dead letter now, in another queue of the file
    engine = open_engine(disk_path, read_only=True)
    try:
        tail = engine.peek("default", 1, offset=len(items) - 2)[0]
        assert record_codec_names(tail.data)[1] == "zstd-dict"
        codec = Codec()
        with pytest.raises(spoolq.SerializationError, match="dictionary"):
            codec.decode(tail.data)
        load_dictionaries(engine, "default", codec)  # an offline reader finds it in the file
        assert codec.decode(tail.data) == items[-1]
        assert len(engine.peek(DICTIONARY_QUEUE, 10)) == 1
    finally:
        engine.close()
    with SyncQueue.create(disk_path) as q:
        assert q.stats["compressor"] == "zstd-dict"
        assert q.get_many(None) == items[1:]
        assert q.peek(dead=True) == [items[0]]


def test_small_records_shrink_with_a_dictionary() -> None:
    plain = Codec("cbor", "zstd")
    trained = Codec("cbor", "zstd-dict")
    items = _events(SAMPLE_COUNT + 200)
    for item in items[:SAMPLE_COUNT]:
        trained.encode(item)
    assert trained.training_due
    dictionary = trained.train()
    assert dictionary is not None
    trained.add_dictionary(1, dictionary, activate=True)
    tail = items[SAMPLE_COUNT:]
    plain_size = sum(len(plain.encode(i)[0]) for i in tail)
    dict_size = sum(len(trained.encode(i)[0]) for i in tail)
    assert dict_size < plain_size * 0.8
    assert [trained.decode(trained.encode(i)[0]) for i in tail] == tail


def test_cli_reads_and_migrates_dictionary_records(tmp_path: Path) -> None:
    src, dst = str(tmp_path / "src.sqlite"), str(tmp_path / "dst.sqlite")
    items = _events(SAMPLE_COUNT + 50)
    with SyncQueue.create(src, compressor="zstd-dict") as q:
        q.put_many(items)
        q.put_many(items[:5])  # after the training: compressed with the dictionary
    runner = CliRunner()
    peek = runner.invoke(cli, ["peek", src, "-n", "3", "--offset", str(len(items)), "--json"])
    assert peek.exit_code == 0, peek.output
    assert [row["item"] for row in json.loads(peek.output)["records"]] == items[:3]
    assert runner.invoke(cli, ["verify", src]).exit_code == 0
    moved = runner.invoke(cli, ["migrate", src, dst])
    assert moved.exit_code == 0, moved.output
    info = runner.invoke(cli, ["info", dst, "--json"])
    assert DICTIONARY_QUEUE not in info.output
    with SyncQueue.create(dst) as q:
        assert q.get_many(None) == items + items[:5]


def test_large_first_records_do_not_end_sampling_before_a_dictionary() -> None:
    codec = Codec("cbor", "zstd-dict")
    rnd = random.Random(3)
    for size in (2 << 20, 600 << 10, 600 << 10, 600 << 10):  # a few large records first
        codec.encode(rnd.randbytes(size))
    assert not codec.training_due  # four samples are too few to train from
    items = _events(SAMPLE_COUNT)
    for item in items:
        codec.encode(item)
        if codec.training_due:
            break
    dictionary = codec.train()
    assert dictionary is not None
    codec.add_dictionary(1, dictionary, activate=True)
    record = codec.encode(items[-1])[0]
    assert record_codec_names(record)[1] == "zstd-dict"
    assert codec.decode(record) == items[-1]


def _trained_codec(seed: int) -> tuple[Codec, bytes]:
    codec = Codec("cbor", "zstd-dict")
    for item in _events(SAMPLE_COUNT, seed):
        codec.encode(item)
    dictionary = codec.train()
    assert dictionary is not None
    codec.add_dictionary(1, dictionary, activate=True)
    return codec, dictionary


def test_a_dictionary_number_registered_again_decodes_with_the_new_dictionary() -> None:
    first, first_dict = _trained_codec(1)
    second, second_dict = _trained_codec(2)
    assert first_dict != second_dict
    item = {"event": "view", "user": "user-3", "path": "/products/4", "n": 99}
    reader = Codec()
    reader.add_dictionary(1, first_dict)
    assert reader.decode(first.encode(item)[0]) == item
    reader.add_dictionary(1, second_dict)  # number 1 names another dictionary now
    assert reader.decode(second.encode(item)[0]) == item


def test_a_file_full_of_dictionaries_gets_no_more_and_the_queue_stops_sampling(
        tmp_path: Path) -> None:
    engine = open_engine(str(tmp_path / "full.sqlite"))
    try:
        _, dictionary = _trained_codec(1)
        engine.append(DICTIONARY_QUEUE, [dictionary] * 255, [len(dictionary)] * 255, 0.0)
        codec = Codec("cbor", "zstd-dict")
        for item in _events(SAMPLE_COUNT):
            codec.encode(item)
        assert codec.training_due
        train_dictionary(engine, "default", codec)
        assert len(engine.peek(DICTIONARY_QUEUE, 300)) == 255
        assert engine.get_meta("queue/default/zstd-dict") is None
        for item in _events(SAMPLE_COUNT):  # records keep their plain zstd compression
            record = codec.encode(item)[0]
            assert codec.decode(record) == item
        assert not codec.training_due
    finally:
        engine.close()


def test_a_dictionary_activated_while_a_thread_sets_up_its_compressor_is_used(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, dictionary = _trained_codec(1)
    compressor = ZstdDictCompressor()
    real = zstandard.ZstdCompressor

    def activating(*args: Any, **kwargs: Any) -> zstandard.ZstdCompressor:
        # Another thread activates the dictionary while this one builds its compressor.
        monkeypatch.setattr(zstandard, "ZstdCompressor", real)
        compressor.activate(1, dictionary)
        return real(*args, **kwargs)

    monkeypatch.setattr(zstandard, "ZstdCompressor", activating)
    assert compressor.compress(b"first record " * 10)[0] == 0  # built before: no dictionary
    assert compressor.compress(b"second record " * 10)[0] == 1


def damage_first_dictionary(path: str, offset: int = -100, mask: int = 0x20, *,
                            drop_checksum: bool = False) -> None:
    """Flip bits of one byte of the file's first dictionary, as a bad sector would; with
    ``drop_checksum``, also drop its checksum (files of earlier releases have none)."""
    db = sqlite3.connect(path)
    try:
        with db:
            if drop_checksum:
                db.execute("DELETE FROM spoolq_meta WHERE key = ?", (checksum_key(1),))
            (qno,) = db.execute("SELECT qno FROM spoolq_queues WHERE name = ?",
                                (DICTIONARY_QUEUE,)).fetchone()
            rowid, data = db.execute(
                "SELECT id, data FROM spoolq_records WHERE id >> 40 = ? ORDER BY id LIMIT 1",
                (qno,)).fetchone()
            damaged = bytearray(data)
            damaged[offset] ^= mask
            db.execute("UPDATE spoolq_records SET data = ? WHERE id = ?",
                       (bytes(damaged), rowid))
    finally:
        db.close()


def test_a_damaged_dictionary_is_detected_not_used_to_decode_wrong_items(tmp_path: Path,
                                                                        caplog: Any) -> None:
    path = str(tmp_path / "q.sqlite")
    items = _events(SAMPLE_COUNT + 200)
    with SyncQueue.create(path, compressor="zstd-dict") as q:
        for start in range(0, len(items), 100):
            q.put_many(items[start:start + 100])
    damage_first_dictionary(path)
    engine = open_engine(path, read_only=True)
    try:
        tail = engine.peek("default", 1, offset=len(items) - 1)[0]
        assert record_codec_names(tail.data)[1] == "zstd-dict"
        codec = Codec()
        load_dictionaries(engine, "default", codec)
        with pytest.raises(spoolq.CorruptError, match="dictionary 1 of the file is damaged"):
            codec.decode(tail.data, tail.id)
    finally:
        engine.close()
    with SyncQueue.create(path) as q:
        got = q.get_many(None)
        assert got == items[:len(got)]  # never a wrong item
        assert q.stats["dead"] == len(items) - len(got) > 0
    assert "damaged" in caplog.text
