"""The file engines at the edges of their inputs and of their recovery: times that are
not numbers, passed in-process, refused as the SQLite engine refuses them; and a dbm
queue whose recovery after a crash is itself cut short by SIGKILL."""

from __future__ import annotations

import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolq import EngineError
from spoolq.engines import (
    DBMEngine,
    Engine,
    Lease,
    StoredRecord,
    SupportsPeekLeased,
)
from spoolq.engines._dbmfiles import current

from .test_engines_limits import _open

NAN = math.nan


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


# ---- dbm: SIGKILL inside the recovery of an earlier crash --------------------------------

SRC = str(Path(__file__).resolve().parent.parent / "src")

# Appends batches until killed, printing the first id of each batch once it is committed.
_WRITER = """
import sys
from spoolq.engines import DBMEngine
eng = DBMEngine(sys.argv[1])
n = 0
while True:
    first = eng.append("q", [b"w%d" % (n + k) for k in range(200)], [1] * 200, 1.0)[0]
    n += 200
    print(first, flush=True)
"""

# Opens the queue (which recovers it) after saying it is about to.
_OPENER = """
import sys
from spoolq.engines import DBMEngine
print("opening", flush=True)
DBMEngine(sys.argv[1]).close()
print("opened", flush=True)
"""


def _child(script: str, path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (SRC, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen([sys.executable, "-c", script, str(path)], env=env,
                            stdout=subprocess.PIPE, text=True)


def _contents(path: Path) -> tuple[object, ...]:
    eng = DBMEngine(path)
    try:
        return (eng.counts("q"), eng.peek("q", 1 << 20), eng.peek_leased("q", 1 << 20),
                eng.counts("q.dead"), eng.peek("q.dead", 100))
    finally:
        eng.close()


def test_a_dbm_queue_killed_inside_its_recovery_recovers_all_of_it_next_time(
        tmp_path: Path) -> None:
    """A writer is killed mid-call (the next open must drop what that call left, by
    copying every live record into a new generation); then the opens that recover it
    are killed at random points, again and again. The open that finally completes must
    find what an open that was never interrupted finds: nothing lost, nothing twice."""
    rng = random.Random(os.getpid())
    path = tmp_path / "q.dbm"
    eng = DBMEngine(path)
    try:  # records on the main line, leased, released, dead, restored: every kind of key
        eng.append("q", [b"r%d" % i for i in range(3000)], [2] * 3000, 1.0)
        held = eng.take("q", 300, 2.0, Lease("worker", 1e12))
        eng.release("q", [(r.id, r.attempts) for r in held[:100]], "worker", not_before=5.0,
                    max_attempts=None)
        eng.release("q", [(r.id, r.attempts) for r in held[100:110]], "worker",
                    not_before=5.0, max_attempts=1)
        eng.restore("q", eng.take("q", 20, 9.0, None))
    finally:
        eng.close()
    deadline = time.monotonic() + 6
    for _ in range(3):
        writer = _child(_WRITER, path)
        assert writer.stdout is not None
        committed = [int(writer.stdout.readline()) for _ in range(rng.randint(1, 3))]
        time.sleep(rng.uniform(0, 0.05))  # inside a call, most likely: calls take most of it
        writer.kill()
        writer.communicate()
        reference = tmp_path / "reference.dbm"
        shutil.rmtree(reference, ignore_errors=True)
        shutil.copytree(path, reference)
        started = time.monotonic()
        expected = _contents(reference)  # recovered by an open nobody interrupts
        took = time.monotonic() - started
        ids = [r.id for r in expected[1]]  # type: ignore[attr-defined]
        assert len(ids) == len(set(ids)) and ids == sorted(ids)
        assert all(first in ids for first in committed)
        kills = 0
        while kills < 6 and time.monotonic() < deadline:
            opener = _child(_OPENER, path)
            assert opener.stdout is not None
            assert opener.stdout.readline() == "opening\n"
            time.sleep(rng.uniform(0, took))
            opener.kill()
            opener.communicate()
            kills += 1
        assert _contents(path) == expected


# Appends once, then again after making the fsync of the generation's files fail (a name of
# the generation that cannot be opened), then waits to be killed.
_FAILED_COMMIT = """
import os, sys, time
from spoolq import EngineError
from spoolq.engines import DBMEngine
path = sys.argv[1]
eng = DBMEngine(path, fsync=True)
eng.append("q", [b"kept"], [4], 1.0)
generation = open(os.path.join(path, "CURRENT")).read().split()[1]
os.symlink(os.path.join(path, "nowhere"), os.path.join(path, generation + ".stray"))
try:
    eng.append("q", [b"refused"], [7], 2.0)
except EngineError as exc:
    print("failed:", exc, flush=True)
else:
    print("stored", flush=True)
time.sleep(60)
"""


def test_a_dbm_call_that_raised_after_writing_its_state_stays_undone_after_a_kill(
        tmp_path: Path) -> None:
    """With fsync on, a call whose state reached the files but whose fsync failed raises:
    it must not have happened. The engine only dropped that state when the next call (or
    close) recovered the queue, so a process killed before that, or inside it, left a
    queue whose next open took the refused append as committed: a producer that put the
    item again, as told, had it twice."""
    path = tmp_path / "q.dbm"
    child = _child(_FAILED_COMMIT, path)
    assert child.stdout is not None
    line = child.stdout.readline()
    child.kill()
    child.communicate()
    assert line.startswith("failed:"), line
    for name in os.listdir(path):
        if name.endswith(".stray"):
            os.unlink(path / name)
    counts, ready = _contents(path)[:2]
    assert [r.data for r in ready] == [b"kept"]  # type: ignore[attr-defined]
    assert counts == (1, 0, 4, 4)


def test_a_dbm_call_whose_fsync_failed_is_undone_in_the_handle_too(tmp_path: Path) -> None:
    """The handle that saw the call fail took its state as the committed one all the same:
    counts, peeks and the next calls went on from a call that raised."""
    path = tmp_path / "q.dbm"
    eng = DBMEngine(path, fsync=True)
    try:
        eng.append("q", [b"kept"], [4], 1.0)
        stray = path / (str(current(str(path))) + ".stray")
        os.symlink(path / "nowhere", stray)
        with pytest.raises(EngineError, match="append"):
            eng.append("q", [b"refused"], [7], 2.0)
        assert eng.counts("q") == (1, 0, 4, 4)
        os.unlink(stray)
        assert eng.append("q", [b"next"], [4], 3.0) == [2]
        assert [r.data for r in eng.peek("q", 10)] == [b"kept", b"next"]
    finally:
        eng.close()
    assert [r.data for r in _contents(path)[1]] == [b"kept", b"next"]  # type: ignore[attr-defined]
