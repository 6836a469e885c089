"""What is specific to the LMDB engine: map growth, delayed records, foreign LMDB files."""

from __future__ import annotations

import logging
import os
import tracemalloc
from pathlib import Path

import lmdb
import pytest

import spoolq
from spoolq import SyncQueue
from spoolq.engines import Lease, LMDBEngine


def test_map_grows_instead_of_failing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "q.lmdb"
    chunks = [os.urandom(10_000) for _ in range(200)]  # 2 MB that no compressor shrinks
    with caplog.at_level(logging.INFO, logger="spoolq"), SyncQueue.create(
            path, engine_options={"map_size": 64 * 1024}) as q:
        for start in range(0, len(chunks), 50):
            q.put_many(chunks[start:start + 50])
        assert q.qsize() == 200
    assert any("grew it" in r.getMessage() for r in caplog.records)
    with SyncQueue.create(path) as q:
        assert q.get_many(None) == chunks


def test_one_record_larger_than_the_map(tmp_path: Path) -> None:
    eng = LMDBEngine(tmp_path / "q.lmdb", map_size=64 * 1024)
    try:
        big = os.urandom(3 * 1024 * 1024)
        eng.append("q", [big], [len(big)], 1.0)
        assert eng.take("q", 1, 1.0, None)[0].data == big
    finally:
        eng.close()


def test_delayed_records_come_back_in_fifo_order(tmp_path: Path) -> None:
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        ids = eng.append("q", [b"a", b"b", b"c", b"d"], [1] * 4, 1.0)
        leased = eng.take("q", 3, 1.0, Lease("me", 100.0))
        # released in reverse, each visible later than the one before
        for rec, delay in zip(reversed(leased), (10.0, 20.0, 30.0), strict=True):
            eng.release("q", [(rec.id, 1)], "me", not_before=delay, max_attempts=None)
        assert [r.data for r in eng.peek("q", 5)] == [b"a", b"b", b"c", b"d"]
        assert [r.data for r in eng.take("q", 5, 15.0, None)] == [b"c", b"d"]
        assert [r.data for r in eng.take("q", 5, 30.0, None)] == [b"a", b"b"]
        assert eng.counts("q") == (0, 0, 0, 0)
        moved = eng.append("src", [b"x", b"y", b"z"], [1] * 3, 1.0)
        (rec,) = eng.take("src", 1, 1.0, Lease("me", 100.0))
        eng.release("src", [(rec.id, 1)], "me", not_before=50.0, max_attempts=None)
        assert eng.move("src", "dst") == 3
        assert [r.data for r in eng.peek("dst", 5)] == [b"x", b"y", b"z"]
        assert ids[-1] < moved[0]
    finally:
        eng.close()


def test_moving_a_queue_onto_itself_ends(tmp_path: Path) -> None:
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        eng.append("q", [b"%d" % i for i in range(1500)], [1] * 1500, 1.0)
        assert eng.move("q", "q") == 1500
        assert eng.counts("q").ready == 1500
        assert eng.peek("q", 1)[0].id > 1500
    finally:
        eng.close()


def test_foreign_lmdb_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.lmdb"
    with lmdb.open(str(path), subdir=False) as env, env.begin(write=True) as txn:
        txn.put(b"user:1", b"alice")
    with pytest.raises(spoolq.FormatError, match="not a spoolq queue"):
        SyncQueue.create(path)


def test_a_file_that_is_not_lmdb_is_refused_without_a_lock_file_beside_it(
        tmp_path: Path) -> None:
    path = tmp_path / "notes.lmdb"
    path.write_bytes(b"shopping list\n" * 100)
    with pytest.raises(spoolq.FormatError, match="not an LMDB file"):
        SyncQueue.create(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.lmdb"]
    assert path.read_bytes() == b"shopping list\n" * 100


def test_a_foreign_lmdb_file_is_refused_without_leaving_a_lock_file(tmp_path: Path) -> None:
    path = tmp_path / "other.lmdb"
    with lmdb.open(str(path), subdir=False, lock=False) as env, env.begin(write=True) as txn:
        txn.put(b"user:1", b"alice")
    for _ in range(2):
        with pytest.raises(spoolq.FormatError, match="not a spoolq queue"):
            SyncQueue.create(path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["other.lmdb"]
    with lmdb.open(str(path), subdir=False, readonly=True, lock=False) as env, \
            env.begin() as txn:
        assert txn.get(b"user:1") == b"alice"


def test_a_refused_lmdb_file_keeps_the_lock_file_its_own_program_made(tmp_path: Path) -> None:
    path = tmp_path / "other.lmdb"
    with lmdb.open(str(path), subdir=False) as env, env.begin(write=True) as txn:
        txn.put(b"user:1", b"alice")  # the program that owns the file leaves its lock file
    with pytest.raises(spoolq.FormatError, match="not a spoolq queue"):
        SyncQueue.create(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.lmdb", "other.lmdb-lock"]


def test_directory_in_place_of_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.lmdb"
    path.mkdir()
    with pytest.raises(spoolq.FormatError, match="is a directory"):
        SyncQueue.create(path)


def test_bad_options_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(spoolq.ConfigurationError, match="map_size"):
        LMDBEngine(tmp_path / "q.lmdb", map_size=0)
    with pytest.raises(spoolq.ConfigurationError, match="max_readers"):
        LMDBEngine(tmp_path / "q.lmdb", max_readers=0)


def _delay_all(eng: LMDBEngine, queue: str, n: int, until: float) -> None:
    """Lease the first n records of ``queue`` and release them to come back at ``until``."""
    leased = eng.take(queue, n, 1.0, Lease("me", 100.0))
    eng.release(queue, [(rec.id, 1) for rec in leased], "me", not_before=until,
                max_attempts=None)


def test_peek_and_move_do_not_load_the_delayed_records(tmp_path: Path) -> None:
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        payloads = [os.urandom(4096) for _ in range(3000)]  # 12 MB of delayed records
        ids = eng.append("q", payloads, [4096] * len(payloads), 1.0)
        _delay_all(eng, "q", len(payloads), 1e9)
        tracemalloc.start()
        try:
            page = eng.peek("q", 3, offset=1000)
            assert eng.move("q", "other", [ids[5], ids[2000]]) == 2
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert [r.data for r in page] == payloads[1000:1003]
        assert peak < 1_500_000, f"{peak} bytes held for a 3-record peek"
        assert [r.data for r in eng.peek("other", 5)] == [payloads[5], payloads[2000]]
        assert eng.counts("q").ready == len(payloads) - 2
    finally:
        eng.close()


def as_earlier_format(path: Path, version: int) -> None:
    """Rewrite a spoolq LMDB file as the layout of format ``version`` (1 or 2): without
    the lease_owners sub-database (and for 1 delayed_ids), and with queue rows without
    their earliest lease end."""
    env = lmdb.open(str(path), subdir=False, max_dbs=10)
    try:
        with env.begin(write=True) as txn:
            for name in (b"delayed_ids", b"lease_owners")[version - 1:]:
                txn.drop(env.open_db(name, txn=txn), delete=True)
            queues = env.open_db(b"queues", txn=txn)
            for key, value in list(txn.cursor(db=queues)):
                txn.put(key, value[:36], db=queues)
            txn.put(b"format_version", str(version).encode(), db=env.open_db(b"meta", txn=txn))
    finally:
        env.close()


def test_a_format_1_file_is_read_as_it_is_and_upgraded_when_opened_for_writing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "q.lmdb"
    eng = LMDBEngine(path)
    ids = eng.append("q", [b"a", b"b", b"c", b"d"], [1] * 4, 1.0)
    _delay_all(eng, "q", 2, 50.0)  # a and b wait until 50
    eng.close()
    as_earlier_format(path, 1)
    before = path.read_bytes()

    reader = LMDBEngine(path, read_only=True)
    try:
        assert reader.get_meta("format_version") == b"1"
        assert [r.data for r in reader.peek("q", 10)] == [b"a", b"b", b"c", b"d"]
        assert [r.data for r in reader.peek("q", 2, offset=1)] == [b"b", b"c"]
    finally:
        reader.close()
    assert path.read_bytes() == before

    with caplog.at_level(logging.INFO, logger="spoolq"):
        eng = LMDBEngine(path)
    try:
        assert eng.get_meta("format_version") == b"3"
        assert any("upgraded from format 1 to 3 (2 delayed records indexed, 0 leases counted)"
                   in r.getMessage()
                   for r in caplog.records)
        assert [r.data for r in eng.peek("q", 10)] == [b"a", b"b", b"c", b"d"]
        assert eng.move("q", "other", [ids[1]]) == 1
        assert [r.data for r in eng.take("q", 10, 20.0, None)] == [b"c", b"d"]
        assert [r.data for r in eng.take("q", 10, 60.0, None)] == [b"a"]
        assert [r.data for r in eng.take("other", 10, 60.0, None)] == [b"b"]
    finally:
        eng.close()


def test_purge_forgets_the_delayed_records_index(tmp_path: Path) -> None:
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        eng.append("q", [b"a", b"b", b"c"], [1] * 3, 1.0)
        _delay_all(eng, "q", 2, 50.0)
        assert eng.purge("q") == 3
        eng.append("q", [b"d"], [1], 1.0)
        assert [r.data for r in eng.peek("q", 10)] == [b"d"]
        assert [r.data for r in eng.take("q", 10, 60.0, None)] == [b"d"]
    finally:
        eng.close()


@pytest.mark.parametrize("leased", [False, True])
def test_a_truncated_record_value_is_reported_by_id(tmp_path: Path, leased: bool) -> None:
    path = tmp_path / "q.lmdb"
    eng = LMDBEngine(path)
    try:
        eng.append("q", [b"first", b"second"], [5, 6], 1.0)
    finally:
        eng.close()
    env = lmdb.open(str(path), subdir=False, max_dbs=16, lock=True)
    try:
        ready = env.open_db(b"ready")
        with env.begin(write=True, db=ready) as txn:
            key, _ = next(iter(txn.cursor()))
            txn.put(key, b"abc")  # shorter than a record's header
    finally:
        env.close()
    eng = LMDBEngine(path)
    try:
        with pytest.raises(spoolq.CorruptError, match="record 1 is damaged"):
            eng.take("q", 2, 1.0, Lease("me", 60.0) if leased else None)
        assert eng.counts("q").ready == 2  # the failed take changed nothing
    finally:
        eng.close()


def test_an_empty_file_opened_read_only_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "q.lmdb"
    path.write_bytes(b"")
    with pytest.raises(spoolq.FormatError, match="is empty: not an LMDB file"):
        LMDBEngine(path, read_only=True)
    assert [p.name for p in tmp_path.iterdir()] == ["q.lmdb"]  # no -lock file beside it
    assert path.read_bytes() == b""
