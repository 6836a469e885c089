"""zstd dictionaries damaged on disk in files without dictionary checksums (earlier
releases): reported as damaged, never taken for a dictionary of other (or no) content."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

import spoolq
from spoolq.codec import record_dictionary
from spoolq.engines import open_engine
from spoolq.zdict import (
    DICTIONARY_QUEUE,
    SAMPLE_COUNT,
    checksum_key,
    damaged_dictionaries,
    dictionary_damage,
)


def _events(n: int, seed: int = 7) -> list[dict[str, object]]:
    rnd = random.Random(seed)
    return [{"event": rnd.choice(["click", "view", "buy"]), "user": f"user-{rnd.randint(1, 90)}",
             "path": f"/products/{rnd.randint(1, 50)}", "n": i} for i in range(n)]


def _damage_without_checksum(path: str, damage: str) -> None:
    """Drop dictionary 1's checksum, as in a file of an earlier release, and damage the
    dictionary: ``"magic"`` flips a bit of its first byte, ``"empty"`` leaves no bytes."""
    db = sqlite3.connect(path)
    try:
        with db:
            db.execute("DELETE FROM spoolq_meta WHERE key = ?", (checksum_key(1),))
            (qno,) = db.execute("SELECT qno FROM spoolq_queues WHERE name = ?",
                                (DICTIONARY_QUEUE,)).fetchone()
            rowid, data = db.execute(
                "SELECT id, data FROM spoolq_records WHERE id >> 40 = ? ORDER BY id LIMIT 1",
                (qno,)).fetchone()
            damaged = b"" if damage == "empty" else bytes([data[0] ^ 1]) + data[1:]
            db.execute("UPDATE spoolq_records SET data = ? WHERE id = ?", (damaged, rowid))
    finally:
        db.close()


@pytest.mark.parametrize("damage", ["magic", "empty"])
def test_a_dictionary_without_a_checksum_whose_header_is_lost_counts_as_damaged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    # zstd takes any bytes without its dictionary header (none at all, too) for a
    # dictionary of raw content: records would decode with other content than they were
    # compressed with, and the queue would compress with it.
    path = str(tmp_path / "q.sqlite")
    items = _events(SAMPLE_COUNT + 100)
    with spoolq.SyncQueue.create(path, compressor="zstd-dict") as q:
        q.put_many(items[:SAMPLE_COUNT])
        q.put_many(items[SAMPLE_COUNT:])  # compressed with dictionary 1
    _damage_without_checksum(path, damage)
    engine = open_engine(path, read_only=True)
    try:
        assert damaged_dictionaries(engine) == [1]  # what spoolq verify reports
        ((number, why),) = dictionary_damage(engine)
        assert number == 1 and why.startswith("zstd cannot load it")
    finally:
        engine.close()
    with spoolq.SyncQueue.create(path) as q:
        got = q.get_many(None)
        assert got == items[:len(got)]
        assert q.stats["dead"] == len(items) - len(got) > 0
    assert "zstd dictionary 1 of the file is damaged: zstd cannot load it" in caplog.text
    engine = open_engine(path, read_only=True)
    try:
        dead = engine.peek("default.dead", 500)
        assert len(dead) == len(items) - len(got)
        assert all("zstd dictionary 1 of the file is damaged" in (rec.reason or "")
                   for rec in dead), dead[0].reason
    finally:
        engine.close()
    more = _events(SAMPLE_COUNT, seed=8)
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(more)  # the queue trains a dictionary of its own again
        q.put(more[0])
        assert q.get_many(None) == [*more, more[0]]
    engine = open_engine(path, read_only=True)
    try:
        assert len(engine.peek(DICTIONARY_QUEUE, 10)) == 2
    finally:
        engine.close()
    with spoolq.SyncQueue.create(path) as q:
        q.put(more[1])
    engine = open_engine(path, read_only=True)
    try:
        assert record_dictionary(engine.peek("default", 1)[0].data) == 2
    finally:
        engine.close()


def _lose_dictionaries(path: str) -> None:
    """Delete the file's dictionary records, keeping their checksums, as damage to the
    file that drops the rows would."""
    db = sqlite3.connect(path)
    try:
        with db:
            (qno,) = db.execute("SELECT qno FROM spoolq_queues WHERE name = ?",
                                (DICTIONARY_QUEUE,)).fetchone()
            db.execute("DELETE FROM spoolq_records WHERE id >> 40 = ?", (qno,))
    finally:
        db.close()


def test_a_lost_dictionary_is_reported_and_its_number_never_given_to_another(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Dictionaries are numbered by their place in the file: one trained after the loss
    # took the lost one's number, and the records compressed with the lost one were
    # decoded with it into wrong items.
    path = str(tmp_path / "q.sqlite")
    items = _events(SAMPLE_COUNT + 300)
    with spoolq.SyncQueue.create(path, compressor="zstd-dict") as q:
        q.put_many(items[:SAMPLE_COUNT])
        q.put_many(items[SAMPLE_COUNT:])  # compressed with dictionary 1
    _lose_dictionaries(path)
    engine = open_engine(path, read_only=True)
    try:
        assert dictionary_damage(engine) == [  # what spoolq verify reports
            (1, "it is missing (the file keeps its checksum, not the dictionary)")]
    finally:
        engine.close()
    more = _events(SAMPLE_COUNT + 10, seed=3)
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(more[:SAMPLE_COUNT])  # the queue trains a dictionary of its own again
        q.put_many(more[SAMPLE_COUNT:])
    assert "zstd dictionary 1 of the file is damaged: it is missing" in caplog.text
    engine = open_engine(path, read_only=True)
    try:
        tail = engine.peek("default", 1, offset=len(items) + len(more) - 1)[0]
        assert record_dictionary(tail.data) == 2
        assert dictionary_damage(engine) == [
            (1, "it is missing (the file keeps its checksum, not the dictionary)")]
    finally:
        engine.close()
    with spoolq.SyncQueue.create(path) as q:
        got = q.get_many(None)
        assert got == items[:len(got) - len(more)] + more  # never a wrong item
        assert q.stats["dead"] == len(items) + len(more) - len(got) > 0
        with pytest.raises(spoolq.CorruptError,
                           match="zstd dictionary 1 of the file is damaged: it is missing"):
            q.peek(dead=True)
