"""The embedded engines at the edges of time, and under the failures a user meets: times
before zero; several processes sharing a file while some are killed; read-only files
and directories; a disk that fills up in the middle of a write; damaged and foreign
files."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolq import SyncQueue
from spoolq.engines import Engine, Lease, SQLiteEngine

from .test_engines_limits import _open

KINDS = ["memory", "sqlite", "lmdb", "dbm", "pickle"]


@pytest.fixture(params=KINDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    eng = _open(str(request.param), tmp_path)
    yield eng
    eng.close()


# ---- times before zero -------------------------------------------------------------------
# A record put, or given back at once (an expired lease, a release with not_before 0 or
# less), has no time to wait for: a take at any time sees it, a negative one or -inf too.
# A record released until a later time is hidden until then, whatever the sign of now.


@pytest.mark.parametrize("now", [-1.0, -1e308, -math.inf, 0.0])
def test_a_take_at_a_time_before_zero_sees_new_records(engine: Engine, now: float) -> None:
    engine.append("q", [b"a", b"b", b"c"], [1, 1, 1], 5.0)
    (leased,) = engine.take("q", 1, now, Lease("me", now + 10))
    assert (leased.data, leased.attempts) == (b"a", 1)
    assert [r.data for r in engine.take("q", 5, now, None)] == [b"b", b"c"]
    assert engine.counts("q")[:2] == (0, 1)


@pytest.mark.parametrize("not_before", [0.0, -5.0, -math.inf])
def test_records_given_back_at_once_are_seen_at_a_time_before_zero(
        engine: Engine, not_before: float) -> None:
    engine.append("q", [b"a", b"b", b"c"], [1, 1, 1], 5.0)
    a, _, _ = engine.take("q", 3, 5.0, Lease("me", 10.0))
    engine.release("q", [(a.id, 1)], "me", not_before=not_before, max_attempts=None)
    assert engine.expire("q", 20.0, owners=["me"]) == 2
    got = engine.take("q", 5, -10.0, None)
    assert [(r.data, r.attempts) for r in got] == [(b"a", 1), (b"b", 1), (b"c", 1)]


def test_a_record_released_until_later_stays_hidden_before_zero(engine: Engine) -> None:
    engine.append("q", [b"a", b"b"], [1, 1], 5.0)
    a, _ = engine.take("q", 2, 5.0, Lease("me", 10.0))
    engine.release("q", [(a.id, 1)], "me", not_before=7.0, max_attempts=None)
    for now in (-math.inf, -1.0, 0.0, 6.9):
        assert engine.take("q", 5, now, None) == []
    assert [r.data for r in engine.take("q", 5, 7.0, None)] == [b"a"]


# ---- a record of another type in an SQLite file --------------------------------------------
# SQLite keeps any value in any column: a file another program wrote into, or damaged in
# a value's type byte, holds a record that is text or a number. The engine hands each
# record out as the bytes it holds, for the codec to refuse as it refuses any damaged
# record, instead of a str or an int, or an error at every take that kept the queue's
# head from anyone.

_NOT_BLOBS = ["'hello'", "CAST(x'ff00fe' AS TEXT)", "12", "1.5"]


def _retype(path: Path, ident: int, value: str, table: str = "spoolq_records") -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"UPDATE {table} SET data = {value} WHERE id & ((1 << 40) - 1) = ?",
                     (ident,))
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("value", _NOT_BLOBS)
def test_an_sqlite_record_that_is_not_a_blob_is_read_as_bytes(tmp_path: Path,
                                                              value: str) -> None:
    path = tmp_path / "q.sqlite"
    eng = SQLiteEngine(path)
    try:
        eng.append("q", [b"a", b"b", b"c", b"d"], [1, 1, 1, 1], 1.0)
        eng.take("q", 1, 1.0, Lease("me", 50.0))
        _retype(path, 1, value, "spoolq_leased")
        _retype(path, 2, value)
        _retype(path, 3, value)
        (leased,) = eng.peek_leased("q", 5)
        peeked = eng.peek("q", 5)
        (taken,) = eng.take("q", 1, 2.0, None)
        (held,) = eng.take("q", 1, 2.0, Lease("me", 50.0))
        for rec in (leased.record, *peeked, taken, held):
            assert type(rec.data) is bytes
        assert [r.data for r in eng.take("q", 5, 2.0, None)] == [b"d"]
    finally:
        eng.close()


def test_a_queue_hands_on_past_an_sqlite_record_that_is_not_a_blob(tmp_path: Path) -> None:
    """The queue moves such a record to its dead letters as it does any record it cannot
    decode, and delivers the rest."""
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(path) as q:
        q.put_many([1, 2, 3])
    _retype(path, 2, "CAST(x'ff00fe' AS TEXT)")
    with SyncQueue.create(path) as q:
        assert [q.get(timeout=5) for _ in range(2)] == [1, 3]
        assert q.stats["dead"] == 1
