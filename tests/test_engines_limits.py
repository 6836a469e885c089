"""SQLite, LMDB and memory engines at their limits: small maps and maps that cannot grow,
restores of ids never given out, damaged counters, lock timeouts, records larger than a
row, and the modes of files that processes of several users share."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from spoolq import ConfigurationError, CorruptError, FormatError, SyncQueue
from spoolq.engines import (
    DBMEngine,
    Engine,
    LMDBEngine,
    MemoryEngine,
    PickleEngine,
    SQLiteEngine,
    StoredRecord,
)


def _open(kind: str, tmp_path: Path) -> Engine:
    if kind == "sqlite":
        return SQLiteEngine(tmp_path / "q.sqlite")
    if kind == "lmdb":
        return LMDBEngine(tmp_path / "q.lmdb")
    if kind == "dbm":
        return DBMEngine(tmp_path / "q.dbm")
    if kind == "pickle":
        return PickleEngine(tmp_path / "q.pickle")
    return MemoryEngine()


@pytest.fixture(params=["sqlite", "lmdb", "memory", "dbm", "pickle"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    eng = _open(str(request.param), tmp_path)
    yield eng
    eng.close()


@pytest.mark.parametrize("map_size", [4096, 8192, 16384])
def test_a_new_lmdb_file_with_a_small_map_grows_it_instead_of_failing(tmp_path: Path,
                                                                       map_size: int) -> None:
    path = tmp_path / "q.lmdb"
    eng = LMDBEngine(path, map_size=map_size)
    try:
        assert eng.append("q", [b"a", b"b"], [1, 1], 1.0) == [1, 2]
    finally:
        eng.close()
    eng = LMDBEngine(path, map_size=map_size, read_only=True)
    try:
        assert [r.data for r in eng.peek("q", 5)] == [b"a", b"b"]
    finally:
        eng.close()


@pytest.mark.parametrize("ident", [0, -1, 3, 1 << 40 | 1, 1 << 64])
def test_a_restore_of_an_id_the_queue_never_gave_out_is_refused(engine: Engine,
                                                                 ident: int) -> None:
    """Such a record would sit outside every queue (SQLite), or be overwritten (LMDB) or
    doubled (memory) by the put that gets its id; later puts failed for good on SQLite."""
    engine.append("q", [b"a"], [1], 1.0)
    engine.append("other", [b"o"], [1], 1.0)
    with pytest.raises(ValueError, match="never gave out"):
        engine.restore("q", [StoredRecord(ident, b"stray", 5, 0, 1.0)])
    assert [r.data for r in engine.peek("q", 10)] == [b"a"]
    for k in range(4):
        engine.append("q", [b"p%d" % k], [2], 1.0)
    assert engine.counts("q") == (5, 0, 9, 9)
    assert [r.data for r in engine.take("q", 10, 2.0, None)] == [b"a", b"p0", b"p1", b"p2",
                                                                  b"p3"]
    assert [r.data for r in engine.peek("other", 10)] == [b"o"]
    assert engine.counts("q") == (0, 0, 0, 0)


def test_an_lmdb_map_that_cannot_grow_fails_the_write_and_keeps_the_handle(
        tmp_path: Path) -> None:
    """With the address space limited (ulimit -v), growing the map fails: the put raised
    lmdb's own MemoryError and every later call on the handle failed."""
    script = textwrap.dedent(f"""
        import resource
        from spoolq import EngineError
        from spoolq.engines import LMDBEngine
        eng = LMDBEngine({str(tmp_path / "q.lmdb")!r}, map_size=1 << 20)
        eng.append("q", [b"a"], [1], 1.0)
        big = b"x" * (48 << 20)
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
        # Room for a copy of the record and a map of 32 MiB, not 64.
        resource.setrlimit(resource.RLIMIT_AS, ((vm << 10) + (80 << 20), resource.RLIM_INFINITY))
        try:
            eng.append("q", [big], [1], 1.0)
        except EngineError as exc:
            assert "could not grow" in str(exc) and "nothing was written" in str(exc), exc
        else:
            raise AssertionError("the append fitted")
        assert eng.counts("q") == (1, 0, 1, 1), eng.counts("q")
        eng.append("q", [b"b"], [1], 1.0)
        assert [r.data for r in eng.take("q", 5, 2.0, None)] == [b"a", b"b"]
        eng.close()
        print("ok")
        """)
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize("counter", [b"next_id", b"next_queue"])
def test_a_damaged_lmdb_counter_is_reported_as_damage(tmp_path: Path, counter: bytes) -> None:
    path = tmp_path / "q.lmdb"
    eng = LMDBEngine(path)
    eng.append("q", [b"a"], [1], 1.0)
    eng.close()
    env = lmdb.Environment(str(path), subdir=False, max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(counter, b"\x01\x02", db=env.open_db(b"counters", txn=txn))
    env.close()
    eng = LMDBEngine(path)
    try:
        with pytest.raises(CorruptError, match=f"counter {counter.decode()} is damaged"):
            eng.append("q" if counter == b"next_id" else "new", [b"b"], [1], 1.0)
        assert [r.data for r in eng.peek("q", 5)] == [b"a"]
        assert eng.queues() == ["q"]
    finally:
        eng.close()


@pytest.mark.parametrize("timeout", ["10", -1, float("nan"), None, True])
def test_a_bad_sqlite_timeout_is_a_configuration_error(tmp_path: Path, timeout: object) -> None:
    """A string raised TypeError from sqlite3; a negative or NaN timeout was taken, and a
    write then failed at once on any lock another process held."""
    with pytest.raises(ConfigurationError, match="timeout must be a number of seconds"):
        SQLiteEngine(tmp_path / "q.sqlite", timeout=timeout)  # type: ignore[arg-type]
    assert not (tmp_path / "q.sqlite").exists()


@pytest.mark.parametrize("timeout", [1e7, float("inf")])
def test_a_very_long_sqlite_timeout_waits_for_a_lock(tmp_path: Path, timeout: float) -> None:
    """Past 24.8 days (a C int of milliseconds) sqlite3 set no busy timeout at all, so a
    write met another process's lock with an immediate LockTimeout."""
    path = tmp_path / "q.sqlite"
    SQLiteEngine(path).close()
    with subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(f"""
                import sqlite3, sys, time
                conn = sqlite3.connect({str(path)!r}, isolation_level=None)
                conn.execute("BEGIN IMMEDIATE")
                print("locked", flush=True)
                time.sleep(0.5)
                conn.execute("COMMIT")
                """)], stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        eng = SQLiteEngine(path, timeout=timeout)
        try:
            assert eng.append("q", [b"a"], [1], 1.0) == [1]  # waited for the lock
        finally:
            eng.close()
        assert holder.wait(timeout=10) == 0


def test_an_sqlite_record_too_large_for_a_row_is_refused_at_the_put(tmp_path: Path) -> None:
    """With durability "buffer" the put of such a record returned, and then every flush
    of the buffer failed: the items put around it were lost at close."""
    path = tmp_path / "q.sqlite"
    eng = SQLiteEngine(path)
    # SQLite's own limit is 1,000,000,000 bytes: a lower one keeps the test small.
    conn: Any = eng._conn
    conn.setlimit(0, 64 * 1024)  # 0: SQLITE_LIMIT_LENGTH
    with pytest.raises(ValueError, match="an SQLite row holds a record of 64512 bytes"):
        eng.append("q", [b"a", os.urandom(64_513)], [1, 64_513], 1.0)
    assert eng.counts("q") == (0, 0, 0, 0)
    with SyncQueue.create(path, engine=eng, compressor="none", durability="buffer") as q:
        q.put(b"a")
        with pytest.raises(ValueError, match="an SQLite row holds"):
            q.put(os.urandom(100_000))
        q.put(b"b")
    eng.close()
    with SyncQueue.create(path) as q:
        assert q.get_many(None) == [b"a", b"b"]


@pytest.mark.parametrize("mode", [0o660, 0o600, 0o644])
def test_the_lmdb_lock_file_takes_the_mode_of_the_queue_file(tmp_path: Path, mode: int) -> None:
    """A queue file shared by a group (0o660) got a lock file of 0o644, which the other
    members of the group cannot write: they could not open the queue, not even to read."""
    path = tmp_path / "q.lmdb"
    LMDBEngine(path).close()
    path.chmod(mode)
    os.remove(f"{path}-lock")
    eng = LMDBEngine(path)
    try:
        eng.append("q", [b"a"], [1], 1.0)
        assert os.stat(f"{path}-lock").st_mode & 0o777 == mode
        assert path.stat().st_mode & 0o777 == mode
    finally:
        eng.close()


@pytest.mark.parametrize("options", [{"max_readers": 1}, {"max_readers": True},
                                     {"map_size": 1 << 64}])
def test_lmdb_options_it_cannot_open_with_are_configuration_errors(tmp_path: Path,
                                                                   options: dict[str, int]) -> None:
    """max_readers=1 was taken, and then a new queue file failed to open with
    MDB_READERS_FULL; a map_size past 64 bits raised OverflowError."""
    with pytest.raises(ConfigurationError, match=next(iter(options))):
        LMDBEngine(tmp_path / "q.lmdb", **options)  # type: ignore[arg-type]
    assert not (tmp_path / "q.lmdb").exists()


@pytest.mark.parametrize("kind", ["sqlite", "lmdb"])
def test_a_read_only_open_waits_for_the_process_creating_the_file(tmp_path: Path,
                                                                  kind: str) -> None:
    """A reader racing the creator of a new file (an empty file, or an SQLite one without
    tables yet) was told it is not a spoolq queue file."""
    import threading

    path = tmp_path / f"q.{kind}"
    if kind == "sqlite":
        import sqlite3
        blank = sqlite3.connect(path)
        blank.execute("PRAGMA journal_mode = WAL")  # what the creator does before its tables
        blank.close()
    else:
        path.write_bytes(b"")
    cls = SQLiteEngine if kind == "sqlite" else LMDBEngine
    result: list[object] = []

    def read() -> None:
        try:
            reader = cls(path, read_only=True)
        except Exception as exc:
            result.append(exc)
        else:
            result.append(reader.counts("q"))
            reader.close()

    # The creator is another process: handles of one process share one open.
    script = textwrap.dedent(f"""
        import sys
        from spoolq.engines import {cls.__name__}
        print("ready", flush=True)
        sys.stdin.readline()
        writer = {cls.__name__}({str(path)!r})
        writer.append("q", [b"a"], [1], 1.0)
        writer.close()
        """)
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as creator:
        assert creator.stdin is not None and creator.stdout is not None
        assert creator.stdout.readline().strip() == "ready"
        thread = threading.Thread(target=read)
        thread.start()
        time.sleep(0.1)
        creator.stdin.write("\n")
        creator.stdin.flush()
        assert creator.wait(30) == 0
    thread.join(10)
    assert result in ([(1, 0, 1, 1)], [(0, 0, 0, 0)]), result


@pytest.mark.parametrize("kind", ["sqlite", "lmdb"])
def test_a_file_that_stays_blank_is_still_refused_read_only(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"q.{kind}"
    path.write_bytes(b"")
    start = time.monotonic()
    with pytest.raises(FormatError, match="empty"):
        (SQLiteEngine if kind == "sqlite" else LMDBEngine)(path, read_only=True)
    assert time.monotonic() - start < 5
    assert path.read_bytes() == b""


_TOO_LARGE = 1 << 63  # one past SQLite's largest integer


@pytest.mark.parametrize("kind", ["memory", "sqlite", "lmdb"])
@pytest.mark.parametrize("raw", [-1, -(1 << 63), _TOO_LARGE])
def test_a_raw_size_out_of_range_is_refused_and_the_queue_works_on(tmp_path: Path, kind: str,
                                                                   raw: int) -> None:
    """SQLite stored a raw size of -2**63, after which every take of the queue raised
    OverflowError summing the sizes; LMDB raised struct.error."""
    eng = _open(kind, tmp_path)
    try:
        eng.append("q", [b"a"], [1], 1.0)
        for batch in ([b"x"], [b"x", b"y"]):
            with pytest.raises(ValueError, match="raw size must be from 0 to"):
                eng.append("q", batch, [raw] * len(batch), 1.0)
        [taken] = eng.take("q", 1, 2.0, None)
        for bad in (taken._replace(raw_size=raw), taken._replace(attempts=-1),
                    taken._replace(attempts=1 << 32)):
            with pytest.raises(ValueError, match="must be from 0 to"):
                eng.restore("q", [bad])
        assert eng.counts("q") == (0, 0, 0, 0)
        eng.restore("q", [taken])
        assert [r.data for r in eng.take("q", 5, 3.0, None)] == [b"a"]
        eng.append("q", [b"b"], [(1 << 63) - 1], 4.0)  # the largest raw size is stored
        assert [(r.data, r.raw_size) for r in eng.peek("q", 5)] == [(b"b", (1 << 63) - 1)]
    finally:
        eng.close()
