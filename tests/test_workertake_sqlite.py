"""A take made on the thread that calls the engine (the SyncQueue's caller, the async
queue's worker thread) that finds puts of other threads or tasks waiting for their group
commit writes them and takes in one transaction (the SQLite engine's ``append_take``),
one commit instead of two. The take sees the older records first; the puts' callers
return once their records are stored, each exactly once; a failure that changed nothing
writes the puts apart and fails the take alone."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from spoolq import Queue, SpoolqError, SyncQueue
from spoolq.engines import Counts
from spoolq.engines.sqlite import SQLiteEngine

from .sqlite_locks import REFUSE_TAKES, file_counts, run_sql
from .threadstate import WorkerHeld


def _engine(q: SyncQueue[Any] | Queue[Any]) -> SQLiteEngine:
    engine = q._core.engine
    assert isinstance(engine, SQLiteEngine)
    return engine


@contextmanager
def _putters_pending(q: SyncQueue[Any], items: list[Any],
                     errors: list[BaseException]) -> Iterator[list[threading.Thread]]:
    """Within it, one thread per item has submitted its put for the group commit and
    waits for it: this thread holds the queue's lock (a take made here may still take
    it, as the lock is reentrant). The threads have returned when it ends."""

    def put(item: Any) -> None:
        try:
            q.put(item)
        except BaseException as exc:
            errors.append(exc)

    core = q._core
    threads = [threading.Thread(target=put, args=(item,)) for item in items]
    with core.lock:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while core.group.pending() < len(items):
            assert time.monotonic() < deadline, "the puts never became pending"
            time.sleep(0.001)
        yield threads
    for t in threads:
        t.join(10)
        assert not t.is_alive()


def test_a_sync_get_writes_other_threads_pending_puts_in_its_transaction(
        tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(str(path)) as q:
        q.put(1)
        engine = _engine(q)
        errors: list[BaseException] = []
        with _putters_pending(q, [2, 3], errors):
            writes = engine._writes
            assert q.get() == 1
            assert engine._writes == writes + 1  # one transaction wrote 2 and 3, took 1
            assert q._core.group.pending() == 0
            assert q.qsize() == 2
        assert errors == []
        assert q.stats["puts"] == 3 and q.stats["gets"] == 1
        assert q.stats["count"] == 2
        assert q.stats["unfinished"] == 3
        assert file_counts(path).ready == 2
        assert sorted(q.get_many(2)) == [2, 3]
        assert q.qsize() == 0
    assert file_counts(path) == Counts(0, 0, 0, 0)


def test_the_take_sees_the_older_records_first_then_the_pending_ones(tmp_path: Path) -> None:
    """A get_many larger than the records stored takes the pending puts too, in the order
    they were submitted, after the older ones."""
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(str(path)) as q:
        q.put_many([1, 2])
        engine = _engine(q)
        errors: list[BaseException] = []
        with _putters_pending(q, ["a"], errors):
            writes = engine._writes
            got = q.get_many(3, timeout=5)
            assert engine._writes == writes + 1
        assert errors == []
        assert got == [1, 2, "a"]
        assert q.qsize() == 0
        assert q.stats["count"] == 0 and q.stats["compressed_size_bytes"] == 0
        assert q.stats["puts"] == 3 and q.stats["gets"] == 3
    assert file_counts(path) == Counts(0, 0, 0, 0)


def test_a_lease_writes_the_pending_puts_in_its_transaction(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(str(path)) as q:
        q.put(1)
        engine = _engine(q)
        errors: list[BaseException] = []
        with _putters_pending(q, [2], errors):
            writes = engine._writes
            msg = q.lease(ttl=30)
            assert engine._writes == writes + 1
        assert errors == []
        assert msg.item == 1 and msg.attempts == 1
        assert q.stats["leased"] == 1 and q.qsize() == 1
        assert file_counts(path) == Counts(1, 1, file_counts(path).stored_bytes,
                                             file_counts(path).raw_bytes)
        q.ack(msg)
        assert q.get(timeout=5) == 2


def test_with_leases_out_the_puts_are_written_apart(tmp_path: Path) -> None:
    """A take that looks for expired leases first writes the pending puts as a flush
    does, then takes: two transactions, the same outcome."""
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(str(path)) as q:
        q.put_many([1, 2])
        msg = q.lease(ttl=30)
        engine = _engine(q)
        errors: list[BaseException] = []
        with _putters_pending(q, [3], errors):
            writes = engine._writes
            assert q.get() == 2
            assert engine._writes >= writes + 2  # the puts, then the take
        assert errors == []
        q.ack(msg)
        assert q.get(timeout=5) == 3
        assert q.stats["puts"] == 3 and q.qsize() == 0


def test_a_take_that_fails_leaves_the_puts_written(tmp_path: Path) -> None:
    """The transaction that would write the puts and take fails having changed nothing:
    the puts are written apart, their callers return without an error, and the get
    raises; nothing is lost or counted twice."""
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(str(path)) as q:
        q.put(1)
        run_sql(path, REFUSE_TAKES)
        errors: list[BaseException] = []
        with _putters_pending(q, [2, 3], errors), \
                pytest.raises(SpoolqError, match="takes refused"):
            q.get()
        assert errors == []
        assert q._core.group.pending() == 0
        assert q.qsize() == 3 and q.stats["puts"] == 3 and q.stats["gets"] == 0
        assert file_counts(path).ready == 3
        run_sql(path, "DROP TRIGGER refuse_takes")
        assert q.get() == 1
        assert sorted(q.get_many(2, timeout=5)) == [2, 3]
        assert q.stats["unfinished"] == 3


def test_a_put_that_fails_fails_its_caller_alone(tmp_path: Path) -> None:
    """A pending put whose record the file refuses: the merged transaction changes
    nothing, the puts are written apart as a flush writes them, so that the refused put
    alone fails; the take is made after them."""
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(str(path), serializer="raw", compressor="none") as q:
        q.put(b"first")
        run_sql(path, """CREATE TRIGGER refuse_bad BEFORE INSERT ON spoolq_records
            WHEN instr(NEW.data, X'626164') > 0 BEGIN SELECT RAISE(ABORT, 'bad record'); END""")
        engine = _engine(q)
        errors: list[BaseException] = []
        with _putters_pending(q, [b"good", b"bad"], errors):
            writes = engine._writes
            assert q.get() == b"first"
            assert engine._writes > writes + 1  # merged, refused, written apart
        assert len(errors) == 1 and "bad record" in str(errors[0])
        assert q.qsize() == 1 and q.stats["puts"] == 2
        assert q.get(timeout=5) == b"good"
        assert q.qsize() == 0
    assert file_counts(path).ready == 0


def test_with_durability_buffer_the_pending_puts_are_served_as_before(
        tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(str(path), durability="buffer", flush_interval=60) as q:
        q.put_many([1, 2])
        engine = _engine(q)
        writes = engine._writes
        assert q.get() == 1  # from the buffer: nothing written
        assert engine._writes == writes
        assert q.get() == 2


@pytest.mark.asyncio
async def test_an_async_get_on_the_worker_writes_the_pending_puts_in_its_transaction(
        tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    async with await Queue.create(str(path)) as q:
        await q.put(1)
        engine = _engine(q)
        writes = engine._writes
        async with WorkerHeld(q):
            get = asyncio.create_task(q.get())
            await asyncio.sleep(0.05)  # the get's take waits for the worker
            puts = asyncio.gather(q.put(2), q.put(3))
            await asyncio.sleep(0.05)
            assert q._core.group.pending() == 2
        assert await asyncio.wait_for(get, 5) == 1
        await asyncio.wait_for(puts, 5)
        assert engine._writes == writes + 1  # one transaction wrote 2 and 3, took 1
        assert q.qsize() == 2
        assert q.stats["puts"] == 3 and q.stats["gets"] == 1
        assert await asyncio.wait_for(q.get_many(2), 5) == [2, 3]
    assert file_counts(path) == Counts(0, 0, 0, 0)
