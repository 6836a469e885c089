"""The SQLite engine at the edges of what its file holds: a row no longer than SQLite's
length limit (a record, its dead-letter reason and a lease's owner, of 448 bytes at most,
share it), and queue numbers that fit a record id (``queue number << 40 | sequence``, a
64-bit integer)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolq.engines import Lease, SQLiteEngine
from spoolq.engines._checks import MAX_OWNER_BYTES
from spoolq.errors import EngineError
from spoolq.owners import new_owner

LIMIT = 64 * 1024  # SQLite's own is 1,000,000,000 bytes: a lower one keeps the tests small
LARGEST = LIMIT - 1024  # the largest record an append takes under it


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[SQLiteEngine]:
    eng = SQLiteEngine(tmp_path / "q.sqlite")
    conn: Any = eng._conn
    conn.setlimit(0, LIMIT)  # 0: SQLITE_LIMIT_LENGTH
    yield eng
    eng.close()


def _lease_one(eng: SQLiteEngine, queue: str, owner: str = "me") -> tuple[int, int]:
    (rec,) = eng.take(queue, 1, 1.0, Lease(owner, 100.0))
    return rec.id, rec.attempts


@pytest.mark.parametrize("reason", ["x" * 1020, "é" * 600, "y" * 100_000])
def test_the_largest_record_goes_to_the_dead_letters_with_any_reason(
        engine: SQLiteEngine, reason: str) -> None:
    # A reason of 1020 bytes made the dead letter's row longer than SQLite's limit: the
    # release failed ("string or blob too big") and the record stayed leased.
    data = os.urandom(LARGEST)
    assert engine.append("q", [data], [LARGEST], 1.0) == [1]
    assert engine.release("q", [_lease_one(engine, "q")], "me", not_before=0.0,
                          max_attempts=1, reason=reason) == [1]
    assert engine.counts("q") == (0, 0, 0, 0)
    (dead,) = engine.peek("q.dead", 1)
    assert dead.data == data and dead.reason is not None
    kept = dead.reason.encode()
    assert len(kept) <= 512
    assert dead.reason == reason or (dead.reason.endswith("…")
                                     and reason.startswith(dead.reason[:-1]))
    # The dead letter is a record like any other: leased by a process, and given up on
    # again (into the dead letters of the dead letters) with another long reason.
    held = _lease_one(engine, "q.dead", new_owner())
    owner = engine.peek_leased("q.dead", 1)[0].owner
    assert engine.release("q.dead", [held], owner, not_before=0.0, max_attempts=1,
                          reason=reason) == [1]
    assert [r.data for r in engine.take("q.dead.dead", 1, 1.0, None)] == [data]


def test_a_short_reason_is_kept_whole(engine: SQLiteEngine) -> None:
    engine.append("q", [os.urandom(LARGEST), b"small"], [LARGEST, 5], 1.0)
    held = [(r.id, r.attempts) for r in engine.take("q", 2, 1.0, Lease("me", 100.0))]
    why = "z" * 512
    assert engine.release("q", held, "me", not_before=0.0, max_attempts=1,
                          reason=why) == [1, 2]
    assert [r.reason for r in engine.peek("q.dead", 2)] == [why, why]


def test_expired_leases_of_the_largest_records_go_to_the_dead_letters(
        engine: SQLiteEngine) -> None:
    engine.append("q", [os.urandom(LARGEST)] * 3, [LARGEST] * 3, 1.0)
    engine.take("q", 3, 1.0, Lease(new_owner(), 2.0))
    assert engine.expire("q", 5.0, max_attempts=1) == 3
    assert [r.reason for r in engine.peek("q.dead", 5)] == ["lease expired"] * 3


def _bury_largest(eng: SQLiteEngine) -> bytes:
    """Put the largest record into the dead letters of "q" with the longest reason kept."""
    data = os.urandom(LARGEST)
    eng.append("q", [data], [LARGEST], 1.0)
    assert eng.release("q", [_lease_one(eng, "q")], "me", not_before=0.0, max_attempts=1,
                       reason="z" * 2000) == [1]
    return data


@pytest.mark.parametrize("owner", ["o" * 448, "é" * 224, "€" * 149],
                         ids=["ascii", "2-byte", "3-byte"])
def test_an_owner_of_the_longest_length_leases_the_largest_dead_letter(
        engine: SQLiteEngine, owner: str) -> None:
    assert MAX_OWNER_BYTES == 448
    data = _bury_largest(engine)
    held = _lease_one(engine, "q.dead", owner)
    assert engine.owners("q.dead") == {owner: 1}
    assert engine.peek_leased("q.dead", 1)[0].record.data == data
    assert engine.ack("q.dead", [held], owner) == [1]


@pytest.mark.parametrize("owner", ["o" * 449, "é" * 250, "x" * 100_000, "\ud800"],
                         ids=["449", "500-in-2-byte", "100000", "surrogate"])
def test_a_longer_owner_or_one_not_utf8_is_refused_and_nothing_changes(
        engine: SQLiteEngine, owner: str) -> None:
    # An owner of 500 bytes made the leased row of the dead letter longer than SQLite's
    # limit: the take failed with "string or blob too big", after a remote client
    # (whose owner no server checks) had been told nothing of the limit.
    _bury_largest(engine)
    engine.append("q", [b"x"], [1], 1.0)
    for queue in ("q.dead", "q"):
        before = engine.counts(queue)
        with pytest.raises(ValueError, match=r"a lease owner must be at most 448 bytes of "
                                             r"UTF-8, not .*; nothing was changed"):
            engine.take(queue, 1, 1.0, Lease(owner, 100.0))
        assert engine.counts(queue) == before
        assert engine.ack(queue, [(1, 1)], owner) == []  # such an owner holds no lease


def test_a_lease_an_earlier_version_gave_a_longer_owner_is_still_settled_by_it(
        tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    eng = SQLiteEngine(path)
    try:
        eng.append("q", [b"a", b"b"], [1, 1], 1.0)
        held = [(r.id, r.attempts) for r in eng.take("q", 2, 1.0, Lease("me", 100.0))]
        owner = "é" * 1000  # as a take before the limit stored it
        with sqlite3.connect(path) as con:
            con.execute("UPDATE spoolq_leased SET owner = ?", (owner,))
        con.close()
        assert eng.owners("q") == {owner: 2}
        assert eng.ack("q", held[:1], owner) == [1]
        assert eng.release("q", held[1:], owner, not_before=0.0, max_attempts=None) == [2]
        assert eng.counts("q") == (1, 0, 1, 1)
    finally:
        eng.close()


# ---- queue numbers ------------------------------------------------------------------------

TOP = (1 << 23) - 1  # the largest queue number: TOP << 40 | sequence < 2**63


def _renumber(path: Path, queue: str, qno: int) -> None:
    """Give ``queue`` the number ``qno`` with plain sqlite3, its records' ids with it, as
    a file that numbered that many queues has."""
    with sqlite3.connect(path) as con:
        (old,) = con.execute("SELECT qno FROM spoolq_queues WHERE name = ?", (queue,)).fetchone()
        for table in ("spoolq_records", "spoolq_leased"):
            con.execute(f"UPDATE {table} SET id = (id & ?) | (? << 40) "
                        "WHERE id >> 40 = ?", ((1 << 40) - 1, qno, old))
        con.execute("UPDATE spoolq_queues SET qno = ? WHERE name = ?", (qno, queue))
    con.close()


def _contents(path: Path) -> list[Any]:
    with sqlite3.connect(path) as con:
        found = [con.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                 for table in ("spoolq_queues", "spoolq_records", "spoolq_leased")]
    con.close()
    return found


def test_a_queue_past_the_largest_number_is_refused_and_the_file_left_as_it_was(
        tmp_path: Path) -> None:
    # Past 2**23 queues, `qno << 40` overflowed SQLite's integers (OverflowError).
    path = tmp_path / "q.sqlite"
    eng = SQLiteEngine(path)
    eng.append("a", [b"1", b"2"], [1, 1], 1.0)
    eng.close()
    _renumber(path, "a", TOP - 1)
    eng = SQLiteEngine(path)
    try:
        assert eng.append("b", [b"x"], [1], 1.0) == [1]  # gets TOP, the last number
        assert eng.append("b", [b"y", b"z"], [1, 1], 1.0) == [2, 3]
        before = _contents(path)
        for attempt in (lambda: eng.append("c", [b"x"], [1], 1.0),
                        lambda: eng.append("c", [b"x", b"y"], [1, 1], 1.0),
                        lambda: eng.move("a", "c")):
            with pytest.raises(EngineError, match=r"cannot add queue 'c': the file has "
                                                  r"numbered 8,388,607 queues, the most"):
                attempt()
            assert _contents(path) == before
        # A release that would open the dead letters of "b" fails the same way, and the
        # lease stays held.
        held = _lease_one(eng, "b")
        with pytest.raises(EngineError, match=r"cannot add queue 'b\.dead'"):
            eng.release("b", [held], "me", not_before=0.0, max_attempts=1)
        assert eng.counts("b").leased == 1
        # The queues the file holds go on working.
        assert eng.release("b", [held], "me", not_before=0.0, max_attempts=None) == [1]
        assert [r.data for r in eng.take("b", 5, 1.0, None)] == [b"x", b"y", b"z"]
        assert [r.data for r in eng.take("a", 5, 1.0, None)] == [b"1", b"2"]
        assert eng.queues() == ["a", "b"]
    finally:
        eng.close()
