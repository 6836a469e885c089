"""The SQLite engine against what a user may do to it: files other processes write while
one reads, and values of the wrong type or out of range given to its calls."""

from __future__ import annotations

import array
import ctypes
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from spoolq.engines import Lease, SQLiteEngine
from spoolq.errors import EngineError
from tests.cli_support import ROOT


def _without_root_powers() -> None:
    """Run as root without the capabilities that ignore file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


# ---- a file read without SQLite's locks ---------------------------------------------------

READER = textwrap.dedent("""
    import sys
    from spoolq.engines import SQLiteEngine

    def show(eng):
        try:
            print(eng.counts("q").ready, len(eng.peek("q", 10_000)), flush=True)
        except Exception as exc:
            print(type(exc).__name__, exc, flush=True)

    eng = SQLiteEngine(sys.argv[1], read_only=True)
    show(eng)
    sys.stdin.readline()  # another process writes the file meanwhile
    show(eng)
    eng.close()
    show(SQLiteEngine(sys.argv[1], read_only=True))
""")


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_a_read_without_locks_refuses_a_file_written_since(tmp_path: Path) -> None:
    # In a directory it cannot write, a reader opens the file without SQLite's locks. A
    # process that may write there can open the queue meanwhile and change the file under
    # the reader, which then read stale pages mixed with new ones (a sound file reported
    # damaged, or the old counts): such a read must fail and say why, and a new open reads
    # the file as it is.
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "q.sqlite"
    with closing(SQLiteEngine(path)) as eng:
        eng.append("q", [b"a" * 100] * 300, [100] * 300, 0.0)
    env = dict(os.environ, PYTHONPATH=os.fspath(ROOT / "src"))
    plain = _without_root_powers if os.getuid() == 0 else None
    folder.chmod(0o555)
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", READER, os.fspath(path)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            preexec_fn=plain)  # noqa: PLW1509 - it only calls prctl()
        assert child.stdout is not None and child.stdin is not None
        first = child.stdout.readline()
    finally:
        folder.chmod(0o755)
    try:
        assert first.split() == ["300", "300"], first + child.communicate(timeout=30)[1]
        with closing(SQLiteEngine(path)) as eng:
            eng.take("q", 250, 0.0, None)
            eng.append("q", [b"b" * 100] * 20, [100] * 20, 0.0)
        out, err = child.communicate("go\n", timeout=30)
    finally:
        child.kill()
        child.wait()
    second, third = out.splitlines()
    assert second.startswith("EngineError"), second + err
    assert "written by another process" in second
    assert third.split() == ["70", "70"], third + err


# ---- values of the wrong type -------------------------------------------------------------

@pytest.fixture
def engine(tmp_path: Path) -> Iterator[SQLiteEngine]:
    eng = SQLiteEngine(tmp_path / "q.sqlite")
    yield eng
    eng.close()


def _rows(eng: SQLiteEngine) -> tuple[object, ...]:
    return (eng.counts("q"), eng.peek("q", 100), eng.peek_leased("q", 100), eng.queues())


@pytest.mark.parametrize("name", [b"q", 7, None])
def test_a_queue_name_that_is_not_a_str_is_refused(engine: SQLiteEngine, name: Any) -> None:
    # SQLite kept b"q" as a blob, a queue apart from "q" that queues() listed as bytes
    # (spoolq info then failed on the file), and 7 as the queue "7".
    engine.append("q", [b"a", b"b"], [1, 1], 0.0)
    taken = engine.take("q", 1, 0.0, None)
    before = _rows(engine)
    with pytest.raises(TypeError, match="queue name must be a str"):
        engine.append(name, [b"x"], [1], 0.0)
    with pytest.raises(TypeError, match="queue name must be a str"):
        engine.append(name, [b"x", b"y"], [1, 1], 0.0)
    with pytest.raises(TypeError, match="queue name must be a str"):
        engine.move("q", name)
    with pytest.raises(TypeError, match="queue name must be a str"):
        engine.restore(name, taken)
    assert _rows(engine) == before
    assert engine.queues() == ["q"]


@pytest.mark.parametrize("record", ["héllo", None, 5])
def test_a_record_that_is_not_bytes_is_refused(engine: SQLiteEngine, record: Any) -> None:
    # A str was stored as text, counted in characters and taken back as its UTF-8
    # bytes: the queue's stored bytes went below zero.
    engine.append("q", [b"a"], [1], 0.0)
    before = _rows(engine)
    for batch in ([record], [b"x", record]):
        with pytest.raises(TypeError, match="a record must be bytes"):
            engine.append("q", batch, [1] * len(batch), 0.0)
    assert _rows(engine) == before


def test_bytes_like_records_are_stored_as_their_bytes(engine: SQLiteEngine) -> None:
    # A memoryview of 4-byte items counted its items, not its 8 bytes.
    wide = memoryview(array.array("i", [1, 2]))
    assert engine.append("q", [bytearray(b"ab"), wide], [2, 8], 0.0) == [1, 2]
    assert engine.counts("q").stored_bytes == 10
    assert [r.data for r in engine.take("q", 2, 0.0, None)] == [b"ab", wide.tobytes()]
    assert engine.counts("q") == (0, 0, 0, 0)
    assert engine.append("q", [memoryview(b"xyz")], [3], 0.0) == [3]
    assert engine.counts("q").stored_bytes == 3


@pytest.mark.parametrize("field, value, error", [
    ("data", "ü", TypeError), ("data", None, TypeError), ("reason", b"why", TypeError),
    ("id", "1", TypeError), ("enqueued_at", "noon", ValueError)])
def test_a_restore_of_a_field_of_the_wrong_type_is_refused(
        engine: SQLiteEngine, field: str, value: Any, error: type[Exception]) -> None:
    engine.append("q", [b"a", b"b"], [1, 1], 0.0)
    taken = engine.take("q", 2, 0.0, None)
    before = _rows(engine)
    with pytest.raises(error):
        engine.restore("q", [taken[0], taken[1]._replace(**{field: value})])
    assert _rows(engine) == before
    engine.restore("q", taken)
    assert engine.take("q", 5, 0.0, None) == taken
    assert engine.counts("q") == (0, 0, 0, 0)


# ---- times that are NaN -------------------------------------------------------------------

def test_times_that_are_nan_are_refused_naming_the_argument(engine: SQLiteEngine) -> None:
    # SQLite stores NaN as NULL: each call failed on a NOT NULL constraint of a column
    # ("spoolq_leased.until"), which names no argument of the call.
    engine.append("q", [b"a", b"b"], [1, 1], 0.0)
    held = [(r.id, r.attempts) for r in engine.take("q", 1, 0.0, Lease("me", 60.0))]
    taken = engine.take("q", 1, 0.0, None)
    before = _rows(engine)
    with pytest.raises(EngineError, match="append failed: now is NaN, not a time"):
        engine.append("q", [b"x"], [1], math.nan)
    with pytest.raises(EngineError, match="take failed: the lease's end is NaN, not a time"):
        engine.take("q", 1, 0.0, Lease("me", math.nan))
    for max_attempts in (None, 1):
        with pytest.raises(EngineError, match="release failed: not_before is NaN, not a time"):
            engine.release("q", held, "me", not_before=math.nan, max_attempts=max_attempts)
    with pytest.raises(EngineError, match="the enqueue time of record 2 is NaN, not a time"):
        engine.restore("q", [taken[0]._replace(enqueued_at=math.nan)])
    assert _rows(engine) == before
    assert engine.counts("q.dead") == (0, 0, 0, 0)
    # No record is ready at NaN, and no lease ends at it: a take or an expire at NaN
    # does nothing, as on every engine.
    assert engine.take("q", 1, math.nan, Lease("me", 60.0)) == []
    assert engine.expire("q", math.nan) == 0
    assert _rows(engine) == before
    # Infinite times are times.
    assert engine.release("q", held, "me", not_before=math.inf, max_attempts=None) == [1]
    assert [r.data for r in engine.take("q", 1, math.inf, None)] == [b"a"]


def test_a_queue_name_stored_as_bytes_is_listed_apart(tmp_path: Path) -> None:
    # A file of a spoolq that did not check a name's type may hold a name as a blob:
    # queues() listed it as bytes, and a server sent it to its clients, which made it
    # the text "b'raw'", a queue that does not exist.
    path = tmp_path / "q.sqlite"
    eng = SQLiteEngine(path)
    eng.append("q", [b"a"], [1], 0.0)
    eng.append("other", [b"b", b"c"], [1, 1], 0.0)
    eng.close()
    with closing(sqlite3.connect(path)) as con, con:
        con.execute("UPDATE spoolq_queues SET name = ? WHERE name = 'other'", (b"raw",))
    eng = SQLiteEngine(path, read_only=True)
    try:
        assert eng.queues() == ["q"]
        assert eng.names_not_text() == [b"raw"]
        assert eng.counts(b"raw").ready == 2  # type: ignore[arg-type]
    finally:
        eng.close()
