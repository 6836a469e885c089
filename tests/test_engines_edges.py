"""SQLite and LMDB engines at their edges: closed handles, odd ids and sizes, foreign,
read-only and odd-named files, and memory that must not grow with a queue."""

from __future__ import annotations

import ctypes
import os
import sqlite3
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

import spoolq
from spoolq.engines import Engine, Lease, LMDBEngine, MemoryEngine, SQLiteEngine

KiB, MiB = 1 << 10, 1 << 20


def _open(kind: str, tmp_path: Path) -> Engine:
    if kind == "sqlite":
        return SQLiteEngine(tmp_path / "q.sqlite")
    if kind == "lmdb":
        return LMDBEngine(tmp_path / "q.lmdb")
    return MemoryEngine()


@pytest.fixture(params=["sqlite", "lmdb"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    eng = _open(str(request.param), tmp_path)
    yield eng
    eng.close()


def _peak(call: Callable[[], object]) -> int:
    """The most memory Python allocated while ``call`` ran, in bytes."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---- closed handles ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sqlite", "lmdb"])
def test_every_call_after_close_raises_closed_error(tmp_path: Path, kind: str) -> None:
    eng = _open(kind, tmp_path)
    eng.append("q", [b"a"], [1], 0.0)
    eng.counts("q")  # the queue's number is cached: the calls below must not get far on it
    eng.close()
    calls: list[Callable[[], object]] = [
        lambda: eng.append("q", [b"x"], [1], 0.0), lambda: eng.take("q", 1, 0.0, None),
        lambda: eng.counts("q"), lambda: eng.peek("q", 1), eng.queues,
        lambda: eng.get_meta("k"), lambda: eng.set_meta("k", b"v"),
        lambda: eng.ack("q", [(1, 1)], "o"), lambda: eng.expire("q", 0.0),
        lambda: eng.move("q", "r"), lambda: eng.purge("q"), lambda: eng.owners("q")]
    for call in calls:
        with pytest.raises(spoolq.ClosedError):
            call()
    eng.close()  # twice is harmless


# ---- n, offsets and ids at the edges ----------------------------------------------------

def test_negative_n_takes_nothing_and_a_negative_peek_window_is_refused(engine: Engine) -> None:
    engine.append("q", [b"a", b"b"], [1, 1], 0.0)
    assert engine.take("q", -1, 0.0, None) == []
    assert engine.take("q", -1, 0.0, Lease("o", 9.0)) == []
    assert engine.counts("q").ready == 2, "a negative n took records"
    for n, offset in ((-1, 0), (1, -1)):
        with pytest.raises(ValueError):
            engine.peek("q", n, offset)


def test_ids_no_record_can_have_are_skipped_not_an_error(engine: Engine) -> None:
    ids = engine.append("q", [b"a", b"b"], [1, 1], 0.0)
    got = engine.take("q", 1, 0.0, Lease("o", 9.0))
    odd = [(-1, 1), (0, 1), (1 << 64, 1), (1 << 70, 1)]
    assert engine.ack("q", odd, "o") == []
    assert engine.release("q", odd, "o", not_before=0.0, max_attempts=None) == []
    assert engine.move("q", "r", [-5, 0, 1 << 64, 1 << 70]) == 0
    assert engine.ack("q", [*odd, (got[0].id, 1)], "o") == [got[0].id]
    assert engine.move("q", "r", [-1, ids[1], 1 << 64]) == 1
    assert engine.counts("q") == (0, 0, 0, 0)
    assert [r.data for r in engine.peek("r", 5)] == [b"b"]


@pytest.mark.parametrize("kind", ["memory", "sqlite", "lmdb"])
def test_dead_letters_of_expired_leases_carry_the_documented_reasons(tmp_path: Path,
                                                                     kind: str) -> None:
    eng = _open(kind, tmp_path)
    try:
        eng.append("q", [b"a", b"b"], [1, 1], 0.0)
        eng.take("q", 1, 0.0, Lease("gone", 100.0))
        eng.take("q", 1, 0.0, Lease("slow", 10.0))
        assert eng.expire("q", 20.0, owners=["gone"], max_attempts=1) == 2
        assert {(r.data, r.reason) for r in eng.peek("q.dead", 5)} == {
            (b"a", "owner died"), (b"b", "lease expired")}
    finally:
        eng.close()


def test_purging_or_moving_from_an_unknown_queue_does_not_create_it(engine: Engine) -> None:
    engine.append("q", [b"a"], [1], 0.0)
    assert engine.purge("typo") == 0
    assert engine.move("other-typo", "q") == 0
    assert engine.queues() == ["q"]


def test_sqlite_hides_queues_earlier_versions_registered_on_a_take(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    eng = SQLiteEngine(path)
    eng.append("q", [b"a"], [1], 0.0)
    eng.close()
    with closing(sqlite3.connect(path)) as conn, conn:  # as a take of "typo" left it
        conn.execute("INSERT INTO spoolq_queues (name, qno) VALUES ('typo', 2)")
    eng = SQLiteEngine(path)
    try:
        assert eng.queues() == ["q"]
        eng.append("typo", [b"b"], [1], 0.0)
        assert eng.queues() == ["q", "typo"]
    finally:
        eng.close()


# ---- foreign, odd-named and read-only files ---------------------------------------------

@pytest.mark.parametrize("content", [b"x", b"\n"])
def test_a_tiny_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path: Path,
                                                                  content: bytes) -> None:
    # SQLite itself takes a one-byte file for an empty database and writes a new one over it.
    path = tmp_path / "notes.sqlite"
    path.write_bytes(content)
    for read_only in (False, True):
        with pytest.raises(spoolq.FormatError, match="not a spoolq queue file"):
            SQLiteEngine(path, read_only=read_only)
    assert path.read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == ["notes.sqlite"]


@pytest.mark.parametrize("name", ["a?b.sqlite", "c#d.sqlite", "e%41.sqlite"])
def test_read_only_open_of_a_name_with_uri_characters(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with closing(SQLiteEngine(path)) as eng:
        eng.append("q", [b"a"], [1], 0.0)
    before = sorted(os.listdir(tmp_path))
    with closing(SQLiteEngine(path, read_only=True)) as eng:
        assert [r.data for r in eng.peek("q", 5)] == [b"a"]
    assert not set(os.listdir(tmp_path)) - set(before) - {name + "-wal", name + "-shm"}, \
        "the read-only open made another file"



READ_ONLY_CHILD = textwrap.dedent("""
    import sys
    from spoolq.engines import LMDBEngine, SQLiteEngine
    cls = SQLiteEngine if sys.argv[1].endswith(".sqlite") else LMDBEngine
    eng = cls(sys.argv[1], read_only=True)
    print(eng.counts("q").ready, [r.data.decode() for r in eng.peek("q", 5)])
    eng.close()
""")


def _without_root_powers() -> None:
    """Run as root without the capabilities that ignore file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
@pytest.mark.parametrize("suffix", [".sqlite", ".lmdb"])
def test_read_only_open_in_a_read_only_directory(tmp_path: Path, suffix: str) -> None:
    # A queue file copied to read-only storage: it can be inspected, and nothing is written.
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / f"q{suffix}"
    with closing(SQLiteEngine(path) if suffix == ".sqlite" else LMDBEngine(path)) as eng:
        eng.append("q", [b"a", b"b"], [1, 1], 0.0)
    for leftover in folder.glob("q*-lock"):
        leftover.unlink()  # copied without LMDB's lock file
    before = sorted(os.listdir(folder))
    path.chmod(0o444)
    folder.chmod(0o555)
    try:
        child = subprocess.run(
            [sys.executable, "-c", READ_ONLY_CHILD, os.fspath(path)], capture_output=True,
            text=True, timeout=30, check=False,
            preexec_fn=_without_root_powers if os.getuid() == 0 else None)
    finally:
        folder.chmod(0o755)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["2", "['a',", "'b']"]
    assert sorted(os.listdir(folder)) == before


# ---- memory that must not grow with a queue ---------------------------------------------

def _fill(engine: Engine, queue: str, count: int, size: int) -> None:
    for start in range(0, count, 500):
        k = min(500, count - start)
        engine.append(queue, [b"%08d" % (start + i) + b"x" * (size - 8) for i in range(k)],
                      [size] * k, 0.0)


def test_sqlite_move_and_burying_do_not_load_the_queue(tmp_path: Path) -> None:
    with closing(SQLiteEngine(tmp_path / "q.sqlite")) as eng:
        _fill(eng, "q", 4000, KiB)  # 4 MiB of records
        assert _peak(lambda: eng.move("q", "r")) < MiB
        assert _peak(lambda: eng.move("r", "r")) < MiB
        assert eng.counts("q").ready == 0 and eng.counts("r").ready == 4000
        while eng.take("r", 500, 0.0, Lease("o", 1.0)):
            pass
        assert _peak(lambda: eng.expire("r", 2.0, max_attempts=1)) < MiB
        dead = eng.peek("r.dead", 4000)
        assert [r.data[:8] for r in dead] == [b"%08d" % i for i in range(4000)]
        assert {(r.attempts, r.reason) for r in dead} == {(1, "lease expired")}
        assert eng.counts("r.dead") == (4000, 0, 4000 * KiB, 4000 * KiB)
        assert eng.counts("r") == (0, 0, 0, 0)


def test_lmdb_expire_does_not_hold_every_expired_record(tmp_path: Path) -> None:
    with closing(LMDBEngine(tmp_path / "q.lmdb")) as eng:
        _fill(eng, "q", 4000, KiB)
        while eng.take("q", 500, 0.0, Lease("o", 1.0)):
            pass
        assert _peak(lambda: eng.expire("q", 2.0)) < MiB
        assert eng.counts("q") == (4000, 0, 4000 * KiB, 4000 * KiB)
        while eng.take("q", 500, 0.0, Lease("o", 1.0)):
            pass
        assert eng.expire("q", 3.0, max_attempts=2) == 4000
        assert [r.data[:8] for r in eng.peek("q.dead", 4000)] == [b"%08d" % i
                                                                  for i in range(4000)]


def test_reading_a_queue_of_large_records_holds_a_few_of_them(engine: Engine) -> None:
    _fill(engine, "q", 24, MiB)  # LMDB read 512 records per pass, whatever their size
    assert _peak(lambda: engine.peek("q", 1, 20)) < 8 * MiB
    assert _peak(lambda: engine.move("q", "r", None)) < 8 * MiB
    assert [r.data[:8] for r in engine.peek("r", 2, 22)] == [b"00000022", b"00000023"]
