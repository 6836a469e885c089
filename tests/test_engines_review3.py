"""The file engines at the edges of their inputs and of their recovery: times that are
not numbers, passed in-process, refused as the SQLite engine refuses them; and a dbm
queue whose recovery after a crash is itself cut short by SIGKILL."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolq import EngineError
from spoolq.engines import (
    DBMEngine,
    Engine,
    Lease,
    LMDBEngine,
    PickleEngine,
    SQLiteEngine,
    StoredRecord,
    SupportsPeekLeased,
)

NAN = math.nan


def _open(kind: str, tmp_path: Path) -> Engine:
    if kind == "sqlite":
        return SQLiteEngine(tmp_path / "q.sqlite")
    if kind == "lmdb":
        return LMDBEngine(tmp_path / "q.lmdb")
    if kind == "dbm":
        return DBMEngine(tmp_path / "q.dbm")
    return PickleEngine(tmp_path / "q.pickle")


@pytest.fixture(params=["sqlite", "lmdb", "dbm", "pickle"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    eng = _open(str(request.param), tmp_path)
    yield eng
    eng.close()


def _snapshot(eng: Engine) -> tuple[object, ...]:
    assert isinstance(eng, SupportsPeekLeased)
    return (eng.counts("q"), eng.peek("q", 100), eng.peek_leased("q", 100),
            eng.counts("q.dead"), eng.peek("q.dead", 100))


def _reopened(eng: Engine, tmp_path: Path) -> tuple[object, ...]:
    """What the file holds, read by a new handle after this one is closed."""
    kind = eng.name
    eng.close()
    again = _open(kind, tmp_path)
    try:
        return _snapshot(again)
    finally:
        again.close()


def test_an_append_at_a_nan_time_is_refused_and_stores_nothing(engine: Engine,
                                                               tmp_path: Path) -> None:
    """The SQLite engine refuses a NaN enqueue time (EngineError: its NOT NULL column
    cannot hold one); the lmdb, dbm and pickle engines stored the record, whose time no
    comparison can order."""
    engine.append("q", [b"a"], [1], 1.0)
    before = _snapshot(engine)
    with pytest.raises(EngineError, match="append"):
        engine.append("q", [b"b", b"c"], [1, 1], NAN)
    assert _snapshot(engine) == before
    assert engine.append("q", [b"d"], [1], 2.0) == [2]  # and no id was used up
    assert _reopened(engine, tmp_path)[1] == [StoredRecord(1, b"a", 1, 0, 1.0),
                                              StoredRecord(2, b"d", 1, 0, 2.0)]


def test_a_lease_until_a_nan_time_is_refused_and_leases_nothing(engine: Engine,
                                                                tmp_path: Path) -> None:
    """A lease ending at NaN never expires by time (``until <= now`` is never true): the
    lmdb, dbm and pickle engines gave out such leases; SQLite refuses them."""
    engine.append("q", [b"a", b"b"], [1, 1], 1.0)
    before = _snapshot(engine)
    with pytest.raises(EngineError, match="take"):
        engine.take("q", 2, 2.0, Lease("worker", NAN))
    assert _snapshot(engine) == before
    assert _reopened(engine, tmp_path) == before


@pytest.mark.parametrize("lease", [None, Lease("worker", 30.0)], ids=["remove", "lease"])
def test_a_take_at_a_nan_time_sees_no_record_as_visible(engine: Engine, tmp_path: Path,
                                                        lease: Lease | None) -> None:
    """No record is visible at a time that is not a time, so a take at ``now=NaN`` takes
    nothing and changes nothing, as in SQLite (``visible_at <= NaN`` is never true); the
    other engines removed or leased the head of the queue."""
    engine.append("q", [b"a"], [1], 1.0)
    before = _snapshot(engine)
    assert engine.take("q", 1, NAN, lease) == []
    assert _snapshot(engine) == before
    assert _reopened(engine, tmp_path) == before


def test_a_release_until_a_nan_time_is_refused_and_the_lease_stays(engine: Engine,
                                                                   tmp_path: Path) -> None:
    """A record released to be visible from NaN would never be taken again (``visible_at
    <= now`` is never true): it would stay in the queue for ever, counted but stuck."""
    engine.append("q", [b"a", b"b"], [1, 1], 1.0)
    held = engine.take("q", 2, 2.0, Lease("worker", 30.0))
    before = _snapshot(engine)
    with pytest.raises(EngineError, match="release"):
        engine.release("q", [(r.id, r.attempts) for r in held], "worker", not_before=NAN,
                       max_attempts=None)
    assert _snapshot(engine) == before
    assert _reopened(engine, tmp_path) == before


def test_a_restore_of_a_record_enqueued_at_a_nan_time_is_refused(engine: Engine,
                                                                 tmp_path: Path) -> None:
    engine.append("q", [b"a", b"b"], [1, 1], 1.0)
    taken = engine.take("q", 2, 2.0, None)
    before = _snapshot(engine)
    with pytest.raises(EngineError, match="restore"):
        engine.restore("q", [taken[0], taken[1]._replace(enqueued_at=NAN)])
    assert _snapshot(engine) == before
    assert _reopened(engine, tmp_path) == before


def test_an_expiry_at_a_nan_time_expires_no_lease_by_time(engine: Engine) -> None:
    """Leases of a dead owner still go back; none runs out at a time that is not one."""
    engine.append("q", [b"a", b"b"], [1, 1], 1.0)
    engine.take("q", 1, 2.0, Lease("alive", 3.0))
    engine.take("q", 1, 2.0, Lease("dead", 3.0))
    assert engine.expire("q", NAN) == 0
    assert engine.expire("q", NAN, owners=["dead"]) == 1
    assert engine.counts("q")[:2] == (1, 1)


@pytest.mark.parametrize("stamp", [math.inf, -math.inf], ids=["inf", "-inf"])
def test_infinite_times_are_times_in_every_file_engine(engine: Engine, tmp_path: Path,
                                                       stamp: float) -> None:
    """An infinite time is ordered like any other (SQLite stores it as such): a lease
    until ``inf`` runs out never, a take at ``inf`` sees every record. They stay allowed."""
    assert engine.append("q", [b"a", b"b"], [1, 1], stamp) == [1, 2]
    got = engine.take("q", 1, 5.0, Lease("worker", math.inf))
    assert [(r.id, r.enqueued_at) for r in got] == [(1, stamp)]
    assert engine.expire("q", 1e300) == 0
    assert [r.id for r in engine.take("q", 5, math.inf, None)] == [2]
    assert engine.release("q", [(1, 1)], "worker", not_before=math.inf,
                          max_attempts=None) == [1]
    assert engine.take("q", 5, 1e300, None) == []
    assert [r.id for r in engine.take("q", 5, math.inf, None)] == [1]
