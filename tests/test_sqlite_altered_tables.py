"""A spoolq SQLite file whose tables another program altered (a column dropped or renamed,
a table made anew, the queues' counters deleted) is refused at open, naming what is
wrong, for writing and reading alike: it used to open, and then either fail at some later
call with "no such column", or show its queues as empty while their records sat in the
file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import spoolq
from spoolq.engines import Lease, SQLiteEngine
from spoolq.errors import CorruptError, FormatError

_RECORDS_WITHOUT_KEY = (
    "CREATE TABLE old AS SELECT * FROM spoolq_records; DROP TABLE spoolq_records; "
    "CREATE TABLE spoolq_records (id INTEGER, visible_at REAL NOT NULL DEFAULT 0, "
    "attempts INTEGER NOT NULL DEFAULT 0, enqueued_at REAL NOT NULL, "
    "raw_size INTEGER NOT NULL, reason TEXT, data BLOB NOT NULL); "
    "INSERT INTO spoolq_records SELECT * FROM old; DROP TABLE old")


def _queue_file(path: Path) -> None:
    eng = SQLiteEngine(path)
    eng.append("q", [b"a", b"b", b"c"], [1, 1, 1], 1.0)
    eng.take("q", 1, 1.0, Lease("me", 100.0))
    eng.close()


def _alter(path: Path, script: str) -> None:
    con = sqlite3.connect(path)
    con.executescript(script)
    con.close()


@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.parametrize(("script", "named"), [
    ("ALTER TABLE spoolq_records DROP COLUMN reason", "spoolq_records has no column reason"),
    ("ALTER TABLE spoolq_records RENAME COLUMN visible_at TO shown_at",
     "spoolq_records has no column visible_at"),
    ("ALTER TABLE spoolq_leased DROP COLUMN owner", "spoolq_leased has no column owner"),
    ("ALTER TABLE spoolq_queues DROP COLUMN stored_bytes",
     "spoolq_queues has no column stored_bytes"),
    ("DROP TABLE spoolq_leased; CREATE TABLE spoolq_leased (id INTEGER PRIMARY KEY, data BLOB)",
     "spoolq_leased has no column owner"),
    (_RECORDS_WITHOUT_KEY, "spoolq_records does not key its rows by id"),
])
def test_a_table_that_lost_a_column_or_its_key_is_refused_at_open(
        tmp_path: Path, script: str, named: str, read_only: bool) -> None:
    path = tmp_path / "q.sqlite"
    _queue_file(path)
    _alter(path, script)
    with pytest.raises(FormatError, match=f"is damaged: its table {named}"):
        SQLiteEngine(path, read_only=read_only)
    with pytest.raises(FormatError, match=named):
        spoolq.SyncQueue.create(str(path))


@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.parametrize(("script", "named"), [
    ("DELETE FROM spoolq_queues", "queue number 1, which the file does not number"),
    ("UPDATE spoolq_queues SET last_seq = 1",
     "record 3 of queue number 1, which has given out ids up to 1 only"),
    ("DELETE FROM spoolq_records; DELETE FROM spoolq_queues",
     "queue number 1, which the file does not number"),  # the lease is left
])
def test_records_of_a_queue_the_file_does_not_number_are_reported_not_an_empty_queue(
        tmp_path: Path, script: str, named: str, read_only: bool) -> None:
    path = tmp_path / "q.sqlite"
    _queue_file(path)
    _alter(path, script)
    with pytest.raises(CorruptError, match=f"is damaged: it holds .*{named}"):
        SQLiteEngine(path, read_only=read_only)


def test_files_as_spoolq_leaves_them_open_as_before(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    _queue_file(path)
    eng = SQLiteEngine(path)
    eng.take("q", 2, 1.0, None)  # the queue is empty of ready records, one is leased
    eng.purge("q")  # and now of every record, its number kept
    eng.append("other", [b"x"], [1], 1.0)
    eng.move("other", "q")
    eng.close()
    for read_only in (False, True):
        eng = SQLiteEngine(path, read_only=read_only)
        assert [r.data for r in eng.peek("q", 5)] == [b"x"]
        eng.close()
    SQLiteEngine(tmp_path / "new.sqlite").close()
    SQLiteEngine(tmp_path / "new.sqlite", read_only=True).close()
