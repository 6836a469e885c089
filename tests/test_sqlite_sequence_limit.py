"""The SQLite engine when a queue has given out the last sequence its record ids hold
(``queue number << 40 | sequence``: 2**40 - 1 of them): a put, a move or a dead letter
that needs another is refused and changes nothing, instead of writing into the next
queue's ids or giving out an id again."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spoolq.engines import Lease, SQLiteEngine
from spoolq.errors import EngineError

LAST = (1 << 40) - 1  # the last sequence of a queue


def _set_last_seq(path: Path, queue: str, last_seq: int) -> None:
    """Make ``queue`` have given out ``last_seq`` sequences, as one that took that many
    puts has."""
    with sqlite3.connect(path) as con:
        con.execute("UPDATE spoolq_queues SET last_seq = ? WHERE name = ?", (last_seq, queue))
    con.close()


def _contents(path: Path) -> list[Any]:
    with sqlite3.connect(path) as con:
        found = [con.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                 for table in ("spoolq_queues", "spoolq_records", "spoolq_leased")]
    con.close()
    return found


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A file of queues "a" (number 1), "b" (2) and "c" (3), each given one record; "c"'s
    was taken, so its id is free again in the table."""
    path = tmp_path / "q.sqlite"
    eng = SQLiteEngine(path)
    for name in ("a", "b", "c"):
        eng.append(name, [name.encode()], [1], 1.0)
    eng.take("c", 1, 1.0, None)
    eng.close()
    return path


@pytest.mark.parametrize("queue", ["a", "b"])  # an odd and an even queue number
@pytest.mark.parametrize("size", [1, 2, 3, 70])
def test_a_put_past_the_last_sequence_is_refused_and_changes_nothing(
        path: Path, queue: str, size: int) -> None:
    _set_last_seq(path, queue, LAST - 1)
    eng = SQLiteEngine(path)
    try:
        assert eng.append(queue, [b"last"], [1], 1.0) == [LAST]
        before = _contents(path)
        with pytest.raises(EngineError, match=rf"queue {queue!r} has given out all "
                                              r"1,099,511,627,775 ids"):
            eng.append(queue, [b"x"] * size, [1] * size, 1.0)
        assert _contents(path) == before
        assert [r.data for r in eng.peek(queue, 5)] == [queue.encode(), b"last"]
        assert eng.peek("c", 5) == []
        assert eng.counts("c").ready == 0
        # The queue's records are still taken as usual.
        assert [r.id for r in eng.take(queue, 5, 1.0, None)] == [1, LAST]
    finally:
        eng.close()


@pytest.mark.parametrize("call", [
    lambda eng: eng.move("a", "b"),
    lambda eng: eng.release("a", [(1, 1)], "me", not_before=0.0, max_attempts=1),
    lambda eng: eng.expire("a", 1e9, max_attempts=1),
], ids=["move", "release to the dead letters", "expire to the dead letters"])
def test_a_move_or_a_dead_letter_past_the_last_sequence_is_refused(
        path: Path, call: Callable[[SQLiteEngine], object]) -> None:
    eng = SQLiteEngine(path)
    try:
        eng.append("a.dead", [b"d"], [1], 1.0)  # number 4
        eng.append("a", [b"a2"], [1], 1.0)
        eng.take("a", 1, 1.0, Lease("me", 5.0))  # a's first record, leased
        _set_last_seq(path, "b", LAST)
        _set_last_seq(path, "a.dead", LAST)
        before = _contents(path)
        with pytest.raises(EngineError, match=r"has given out all 1,099,511,627,775 ids"):
            call(eng)
        assert _contents(path) == before
    finally:
        eng.close()
