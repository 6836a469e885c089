"""The PostgreSQL engine and times that are not times: what the conformance suite leaves
to each engine (an expiry at NaN), and the store after a refused call, read on the
server itself. And times beyond what its time arithmetic holds (infinite ones, finite
ones thousands of years away), which every other engine takes as ordinary times: each
case runs on the SQLite engine too, as the reference."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

import psycopg
from psycopg import sql

from spoolq import EngineError
from spoolq.engines import Engine, Lease, MemoryEngine, SQLiteEngine, StoredRecord
from spoolq.engines.base import SupportsPeekLeased
from spoolq.engines.postgres import PostgresEngine

from . import pg_support

engine = pg_support.engine  # the fixture: an engine on the test's own schema


def test_an_expiry_at_a_nan_time_expires_no_lease_by_time(engine: PostgresEngine) -> None:
    """As in the file engines: leases of a dead owner still go back, none runs out at a
    time that is not one. The engine failed the call ("interval out of range"), so a
    dead owner's leases stayed held."""
    engine.append("q", [b"a", b"b"], [1, 1], 1.0)
    engine.take("q", 1, 2.0, Lease("alive", 3.0))
    engine.take("q", 1, 2.0, Lease("dead", 3.0))
    assert engine.expire("q", math.nan) == 0
    assert engine.expire("q", math.nan, owners=["dead"]) == 1
    assert engine.counts("q")[:2] == (1, 1)
    assert engine.owners("q") == {"alive": 1}


def test_a_refused_append_uses_no_id_and_names_the_time(engine: PostgresEngine, pg_url: str,
                                                        pg_schema: str) -> None:
    """The refusal comes before the insert: no row, and no id of the identity used up."""
    assert engine.append("q", [b"a"], [1], 1.0) == [1]
    with pytest.raises(EngineError, match="append failed: now is NaN"):
        engine.append("q", [b"b"], [1], math.nan)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}.records").format(
            sql.Identifier(pg_schema))).fetchone()
    assert row == (1,)
    assert engine.append("q", [b"c"], [1], 2.0) == [2]


# ---- infinite and far times -----------------------------------------------------------

INF = math.inf
FAR = 1e300  # finite, past the end of PostgreSQL's timestamps


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[SQLiteEngine]:
    eng = SQLiteEngine(tmp_path / "q.sqlite")
    try:
        yield eng
    finally:
        eng.close()


def _same(engine: PostgresEngine, reference: Engine,
          case: Callable[[Engine, float], object]) -> object:
    """What ``case`` returns on the PostgreSQL engine, which must be what it returns on
    ``reference``; ``case`` gets an engine and the time of now."""
    now = time.time()
    expected = case(reference, now)
    assert case(engine, now) == expected
    return expected


def _data(records: list[StoredRecord]) -> list[tuple[bytes, int]]:
    return [(r.data, r.attempts) for r in records]


def _delayed(eng: Engine, now: float, *times: float) -> None:
    """One record per time, released to wait until it, then two ready records."""
    eng.append("q", [b"d%d" % i for i in range(len(times))], [2] * len(times), now)
    held = eng.take("q", len(times), now, Lease("me", now + 30))
    for rec, until in zip(held, times, strict=True):
        assert eng.release("q", [(rec.id, 1)], "me", not_before=until,
                           max_attempts=None) == [rec.id]
    eng.append("q", [b"r0", b"r1"], [2, 2], now)


def test_a_take_at_infinity_takes_every_ready_record(engine: PostgresEngine,
                                                     sqlite: SQLiteEngine) -> None:
    """Records wait at most until +inf: a take at +inf takes them all, those released to
    wait until a far time or until +inf too, in id order; leased records stay leased.
    The engine failed the take ("interval out of range")."""
    def case(eng: Engine, now: float) -> object:
        _delayed(eng, now, now + 3600, FAR, INF)
        eng.append("q", [b"held"], [4], now)
        (held,) = eng.take("q", 1, INF, Lease("other", now + 30))
        got = _data(eng.take("q", 2, INF, None)) + _data(eng.take("q", 9, INF, None))
        return held.data, got, eng.counts("q")[:2], eng.owners("q")
    assert _same(engine, sqlite, case) == (
        b"d0", [(b"d1", 1), (b"d2", 1), (b"r0", 0), (b"r1", 0), (b"held", 0)], (0, 1),
        {"other": 1})


def test_a_lease_taken_at_infinity(engine: PostgresEngine, sqlite: SQLiteEngine) -> None:
    """A take at +inf may lease too: the lease ends when it says, whatever the take's now."""
    def case(eng: Engine, now: float) -> object:
        eng.append("q", [b"a", b"b"], [1, 1], now)
        got = _data(eng.take("q", 1, INF, Lease("me", now + 30)))
        got += _data(eng.take("q", 1, INF, Lease("me", INF)))
        return got, eng.counts("q")[:2], eng.expire("q", now + 60), eng.counts("q")[:2]
    assert _same(engine, sqlite, case) == ([(b"a", 1), (b"b", 1)], (0, 2), 1, (1, 1))


def test_a_lease_until_infinity_never_runs_out(engine: PostgresEngine,
                                               sqlite: SQLiteEngine) -> None:
    """No expiry at a finite time ends it, however far; an expiry at +inf does. It is
    settled like any other lease. The engine failed the take ("interval out of range")."""
    def case(eng: Engine, now: float) -> object:
        eng.append("q", [b"a", b"b", b"c"], [1, 1, 1], now)
        a, b, c = eng.take("q", 3, now, Lease("me", INF))
        ended = [eng.expire("q", t, max_attempts=1) for t in (now + 1e9, now + 1e12, FAR)]
        settled = (eng.ack("q", [(a.id, 1)], "me") == [a.id],
                   eng.release("q", [(b.id, 1)], "me", not_before=0.0,
                               max_attempts=None) == [b.id])
        return (ended, settled, eng.owners("q"), eng.expire("q", INF),
                _data(eng.take("q", 5, now, None)), c.data)
    assert _same(engine, sqlite, case) == (
        [0, 0, 0], (True, True), {"me": 1}, 1, [(b"b", 1), (b"c", 1)], b"c")


def test_peek_leased_shows_a_lease_until_infinity(engine: PostgresEngine,
                                                  sqlite: SQLiteEngine) -> None:
    """Its end reads back as +inf; a lease ending far away keeps its place among them."""
    def case(eng: Engine, now: float) -> object:
        eng.append("q", [b"a", b"b"], [1, 1], now)
        eng.take("q", 1, now, Lease("me", INF))
        eng.take("q", 1, now, Lease("you", now + 3600))
        assert isinstance(eng, SupportsPeekLeased)
        leased = eng.peek_leased("q", 5)
        return ([(lr.record.data, lr.owner) for lr in leased], leased[0].until,
                abs(leased[1].until - (now + 3600)) < 60)
    assert _same(engine, sqlite, case) == ([(b"a", "me"), (b"b", "you")], INF, True)


def test_an_expiry_at_infinity_ends_every_lease(engine: PostgresEngine,
                                                sqlite: SQLiteEngine) -> None:
    """Leases ending soon, far away and at +inf all run out at +inf, and go back to their
    places (or to the dead letters); an expiry at a far time ends those that end before
    it. The engine failed the expiry ("interval out of range"), and the take of a lease
    until a time past the end of its timestamps ("timestamp out of range")."""
    def case(eng: Engine, now: float) -> object:
        eng.append("q", [b"a", b"b", b"c", b"d"], [1] * 4, now)
        for until in (now + 5, now + 1e10, FAR, INF):
            eng.take("q", 1, now, Lease("me", until))
        first = eng.expire("q", now + 1e11)
        dead = eng.expire("q", INF, max_attempts=1)
        return (first, dead, eng.counts("q")[:2], eng.owners("q"), _data(eng.peek("q", 5)),
                _data(eng.peek("q.dead", 5)))
    assert _same(engine, sqlite, case) == (
        2, 2, (2, 0), {}, [(b"a", 1), (b"b", 1)], [(b"c", 1), (b"d", 1)])


def test_an_expiry_at_infinity_with_owners(engine: PostgresEngine,
                                           sqlite: SQLiteEngine) -> None:
    """The dead owners' leases go as well, each with its reason."""
    def case(eng: Engine, now: float) -> object:
        eng.append("q", [b"a", b"b"], [1, 1], now)
        eng.take("q", 1, now, Lease("gone", INF))
        eng.take("q", 1, now, Lease("me", INF))
        ended = eng.expire("q", FAR, owners=["gone"], max_attempts=1)
        return ended, eng.owners("q"), eng.expire("q", INF, owners=["gone"]), \
            [(r.data, r.reason) for r in eng.peek("q.dead", 5)], _data(eng.peek("q", 5))
    assert _same(engine, sqlite, case) == (
        1, {"me": 1}, 1, [(b"a", "owner died")], [(b"b", 1)])


def test_a_release_until_infinity_waits_for_a_take_at_infinity(
        engine: PostgresEngine, sqlite: SQLiteEngine) -> None:
    """Released to wait until +inf, a record is counted and peeked as ready, is taken at
    no finite time, and is taken at +inf. The engine failed the release ("interval out of
    range"); released until a far finite time, it failed with "timestamp out of range"."""
    def case(eng: Engine, now: float) -> object:
        _delayed(eng, now, INF, FAR)
        return (eng.counts("q")[:2], _data(eng.peek("q", 5)),
                _data(eng.take("q", 5, now + 1e12, None)), _data(eng.take("q", 5, FAR, None)),
                _data(eng.take("q", 5, INF, Lease("me", INF))))
    assert _same(engine, sqlite, case) == (
        (4, 0), [(b"d0", 1), (b"d1", 1), (b"r0", 0), (b"r1", 0)], [(b"r0", 0), (b"r1", 0)],
        [(b"d1", 1)], [(b"d0", 2)])


def test_far_finite_times_keep_their_order(engine: PostgresEngine,
                                           sqlite: SQLiteEngine) -> None:
    """Times some thousands of years away, within what the engine tells apart: a take
    sees what is due by then and no more. (Not at the very time a record is due: this
    engine turns a time into one on the database clock, a few microseconds apart from
    one call to the next.)"""
    def case(eng: Engine, now: float) -> object:
        _delayed(eng, now, now + 1e9, now + 2e9)
        return (_data(eng.take("q", 5, now + 1.5e9, None)),
                _data(eng.take("q", 5, now + 2.5e9, None)))
    assert _same(engine, sqlite, case) == (
        [(b"d0", 1), (b"r0", 0), (b"r1", 0)], [(b"d1", 1)])


@pytest.mark.parametrize("at", [INF, -INF])
def test_an_append_at_an_infinite_time(engine: PostgresEngine, sqlite: SQLiteEngine,
                                       at: float) -> None:
    """The time is stored as given and the records are ready at once."""
    def case(eng: Engine, now: float) -> object:
        eng.append("q", [b"a"], [1], at)
        return [(r.data, r.enqueued_at) for r in eng.take("q", 5, now, None)]
    assert _same(engine, sqlite, case) == [(b"a", at)]


def test_times_before_any_time(engine: PostgresEngine) -> None:
    """A take or expiry at -inf, a lease or release until -inf. Here SQLite disagrees with
    the other engines: its records are ready from time 0 on, not before, so a take at a
    time before 1970 takes nothing there; the memory, lmdb, dbm and pickle engines take
    every record never released, as this engine does. The memory engine is the reference.
    The engine failed each of these calls ("interval out of range")."""
    memory = MemoryEngine()

    def case(eng: Engine, now: float) -> object:
        eng.append("q", [b"a", b"b", b"c"], [1, 1, 1], now)
        a, b = eng.take("q", 2, now, Lease("me", now + 30))
        eng.release("q", [(a.id, 1)], "me", not_before=-INF, max_attempts=None)
        eng.release("q", [(b.id, 1)], "me", not_before=now + 30, max_attempts=None)
        got = _data(eng.take("q", 5, -INF, Lease("me", -INF)))
        return got, eng.expire("q", -INF), _data(eng.take("q", 5, now, None))
    try:
        assert _same(engine, memory, case) == (
            [(b"a", 2), (b"c", 1)], 2, [(b"a", 2), (b"c", 1)])
    finally:
        memory.close()


def test_an_expiry_at_a_nan_time_ends_no_lease_until_a_time_long_past(
        engine: PostgresEngine, sqlite: SQLiteEngine) -> None:
    """No lease runs out at a time that is not one, not even one until -inf or until a
    time before the start of timestamptz. The engine read NaN as a time 6,000 years ago
    (GREATEST skips the NULL it stands for) and ended both leases."""
    def case(eng: Engine, now: float) -> object:
        eng.append("q", [b"a", b"b", b"c"], [1, 1, 1], now)
        for until in (-INF, -FAR):
            eng.take("q", 1, now, Lease("me", until))
        return eng.expire("q", math.nan), eng.owners("q"), eng.counts("q")[:2]
    assert _same(engine, sqlite, case) == (0, {"me": 2}, (1, 2))
