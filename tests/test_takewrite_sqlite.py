"""A take that finds puts waiting for their group commit writes them and takes in one
transaction (the SQLite engine's ``append_take``): the async queue with ``calls_on_loop``
makes such a take on the event loop. The take sees the records it writes, after the
older ones; a failure changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from spoolq import Queue, SpoolqError
from spoolq._conformance import AppendTakeConformance
from spoolq.engines import Counts
from spoolq.engines.base import Lease
from spoolq.engines.sqlite import SQLiteEngine
from spoolq.errors import LockTimeout

from .sqlite_locks import REFUSE_TAKES, hold_lock, run_sql
from .threadstate import WorkerHeld

NOW = 1_000_000.0


def _data(engine: SQLiteEngine, queue: str = "q") -> list[bytes]:
    return [r.data for r in engine.peek(queue, 100)]


def test_the_take_sees_older_records_first_then_those_it_writes(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    eng, other = SQLiteEngine(path), SQLiteEngine(path)
    try:
        assert eng.append("q", [b"a", b"bb"], [10, 20], NOW) == [1, 2]
        ids, taken = eng.append_take("q", [b"ccc", b"dddd"], [30, 40], NOW, 3, None)
        assert ids == [3, 4]
        assert [(r.id, r.data, r.raw_size, r.attempts) for r in taken] == [
            (1, b"a", 10, 0), (2, b"bb", 20, 0), (3, b"ccc", 30, 0)]
        assert other.counts("q") == Counts(1, 0, 4, 40)
        assert _data(other) == [b"dddd"]
    finally:
        eng.close()
        other.close()


def test_a_queue_never_used_and_a_lease(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    eng = SQLiteEngine(path)
    try:
        ids, taken = eng.append_take("new", [b"x", b"y"], [1, 2], NOW,
                                     1, Lease("me", NOW + 30))
        assert ids == [1, 2]
        assert [(r.id, r.data, r.attempts) for r in taken] == [(1, b"x", 1)]
        assert eng.counts("new") == Counts(1, 1, 2, 3)
        assert eng.owners("new") == {"me": 1}
        assert "new" in eng.queues()
        # n of 0 takes nothing: the records are written all the same
        assert eng.append_take("new", [b"z"], [1], NOW, 0, None) == ([3], [])
        assert _data(eng, "new") == [b"y", b"z"]
    finally:
        eng.close()


def test_a_failing_take_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    eng = SQLiteEngine(path)
    try:
        eng.append("q", [b"a"], [1], NOW)
        run_sql(path, REFUSE_TAKES)
        with pytest.raises(SpoolqError, match="takes refused"):
            eng.append_take("q", [b"b", b"c"], [1, 1], NOW, 1, None)
        assert eng.counts("q") == Counts(1, 0, 1, 1)
        assert _data(eng) == [b"a"]
        run_sql(path, "DROP TRIGGER refuse_takes")
        # ids only grow: those of the rolled-back write are given again
        assert eng.append_take("q", [b"b"], [1], NOW, 1, None)[0] == [2]
    finally:
        eng.close()


def test_within_no_wait_another_process_lock_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    eng = SQLiteEngine(path)
    try:
        eng.append("q", [b"a"], [1], NOW)
        with hold_lock(str(path), 1.0), pytest.raises(LockTimeout), eng.no_wait():
            eng.append_take("q", [b"b"], [1], NOW, 1, None)
        assert _data(eng) == [b"a"]
        assert eng.counts("q") == Counts(1, 0, 1, 1)
    finally:
        eng.close()


class TestSQLiteAppendTake(AppendTakeConformance):
    @pytest.fixture
    def open_engine(self, tmp_path: Path) -> Callable[[], SQLiteEngine]:
        return lambda: SQLiteEngine(tmp_path / "q.sqlite")


@pytest.mark.asyncio
async def test_a_get_on_the_loop_writes_the_gathering_puts_in_its_transaction(
        tmp_path: Path) -> None:
    async with await Queue.create(str(tmp_path / "q.sqlite"), calls_on_loop=True) as q:
        await q.put(1)
        engine = q._core.engine
        assert isinstance(engine, SQLiteEngine)
        writes = engine._writes
        async with WorkerHeld(q):
            got = await asyncio.wait_for(asyncio.gather(q.put(2), q.put(3), q.get()), 5)
            assert got == [None, None, 1]
            assert engine._writes == writes + 1  # one transaction wrote 2 and 3 and took 1
            assert q.qsize() == 2
            assert q.stats["puts"] == 3 and q.stats["gets"] == 1
            assert q.stats["count"] == 2
            assert await asyncio.wait_for(q.get_many(2), 5) == [2, 3]
        other = SQLiteEngine(tmp_path / "q.sqlite")
        try:
            assert other.counts("default") == Counts(0, 0, 0, 0)
        finally:
            other.close()


@pytest.mark.asyncio
async def test_a_get_whose_take_fails_leaves_the_puts_written(tmp_path: Path) -> None:
    """The transaction that would write the puts and take fails: nothing of it stays;
    the puts are written as a take on the worker writes them, and the get raises."""
    path = tmp_path / "q.sqlite"
    async with await Queue.create(str(path), calls_on_loop=True) as q:
        await q.put(1)
        run_sql(path, REFUSE_TAKES)
        async with WorkerHeld(q):
            got = await asyncio.wait_for(
                asyncio.gather(q.put(2), q.put(3), q.get(), return_exceptions=True), 5)
            assert got[:2] == [None, None]
            assert isinstance(got[2], SpoolqError) and "takes refused" in str(got[2])
        run_sql(path, "DROP TRIGGER refuse_takes")
        assert q.qsize() == 3
        assert await asyncio.wait_for(q.get_many(3), 5) == [1, 2, 3]


@pytest.mark.asyncio
async def test_a_get_lets_ready_tasks_put_first_and_writes_their_puts(tmp_path: Path) -> None:
    """A get on the loop with an item ready yields once to the tasks ready to run, as a
    put does: their puts join its transaction, rather than each take or batch of puts
    committing apart."""
    async with await Queue.create(str(tmp_path / "q.sqlite"), calls_on_loop=True) as q:
        await q.put_many([1, 2])
        engine = q._core.engine
        assert isinstance(engine, SQLiteEngine)

        async def produce(first: int) -> None:
            for item in range(first, first + 3):
                await q.put(item)

        async with WorkerHeld(q):
            writes = engine._writes
            producers = [asyncio.create_task(produce(k)) for k in (10, 20)]
            async with asyncio.timeout(5):
                got = [await q.get() for _ in range(4)]
                await asyncio.gather(*producers)
            assert got == [1, 2, 10, 20]
            assert engine._writes == writes + 4  # the last puts are written by a put
            assert q.qsize() == 4
            assert await asyncio.wait_for(q.get_many(4), 5) == [11, 21, 12, 22]
