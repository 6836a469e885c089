"""join() and task_done() when items leave the queue without a task_done (dead letters,
purges) as the queue empties, and the times a handle keeps of the records its nacks
delayed, against real queue files."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import spoolq

from .conftest import queue_path

ENGINES = ["lmdb", "memory", "sqlite"]


@pytest.fixture(params=ENGINES)
def path(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return queue_path(tmp_path, str(request.param))


def _join_within(q: spoolq.SyncQueue[str], seconds: float) -> bool:
    joiner = threading.Thread(target=q.join, daemon=True)
    joiner.start()
    joiner.join(seconds)
    return not joiner.is_alive()


# ---- items that leave the queue for good as it empties ------------------------------------


def _a_taken_then_c_put(q: spoolq.SyncQueue[str]) -> None:
    """With "a" taken by get and "b" gone for good (the queue now empty), put "c": "a"
    and "c" are unfinished; a task_done for "a" leaves "c" unfinished."""
    assert q.stats["unfinished"] == 1  # "a"
    q.put("c")
    assert q.stats["unfinished"] == 2
    q.task_done()  # for "a"
    assert q.stats["unfinished"] == 1
    assert not _join_within(q, 0.3)  # "c" is still to be processed
    assert q.get(timeout=5) == "c"
    q.task_done()
    assert _join_within(q, 5)
    with pytest.raises(ValueError):
        q.task_done()


def test_a_nack_into_the_dead_letters_that_empties_the_queue_is_counted_once(
        path: str) -> None:
    # The nack read the counts, found the queue empty and counted every item but "a" as
    # processed; then it counted "b" as processed once more, taking away the next put's
    # count: join() returned with "c" in the queue.
    with spoolq.SyncQueue.create(path, max_attempts=1) as q:
        q.put_many(["a", "b"])
        assert q.get(timeout=5) == "a"
        q.nack(q.lease(timeout=5))  # delivered once: to the dead letters
        assert q.stats["dead"] == 1
        _a_taken_then_c_put(q)


def test_a_purge_that_empties_the_queue_counts_its_items_once(path: str) -> None:
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(["a", "b"])
        assert q.get(timeout=5) == "a"
        assert q.purge() == 1
        _a_taken_then_c_put(q)


def test_a_lease_that_runs_out_into_the_dead_letters_is_counted_once(path: str) -> None:
    with spoolq.SyncQueue.create(path, max_attempts=1, poll_interval=0.01) as q:
        q.put_many(["a", "b"])
        assert q.get(timeout=5) == "a"
        q.lease(timeout=5, ttl=0.05)
        time.sleep(0.3)
        with pytest.raises(spoolq.Empty):
            q.get(timeout=0.2)  # reaps the lease: "b" goes to the dead letters
        assert q.stats["dead"] == 1
        _a_taken_then_c_put(q)


def test_an_async_nack_into_the_dead_letters_is_counted_once(path: str) -> None:
    import asyncio

    async def run() -> None:
        async with await spoolq.Queue.create(path, max_attempts=1) as q:
            await q.put_many(["a", "b"])
            assert await q.get() == "a"
            await q.nack(await q.lease(timeout=5))
            await q.put("c")
            assert q.stats["unfinished"] == 2
            q.task_done()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(q.join(), 0.3)
            assert await q.get() == "c"
            q.task_done()
            await asyncio.wait_for(q.join(), 5)

    asyncio.run(run())


# ---- the times of delayed records a handle keeps ------------------------------------------


def test_nacks_into_the_dead_letters_keep_no_time_to_wake_for(path: str) -> None:
    # Each nack with a delay kept a time to wake the waiting gets for until the delay
    # ended, also when its records went to the dead letters: an hour's worth of them.
    with spoolq.SyncQueue.create(path, max_attempts=1) as q:
        q.put_many(range(300))
        for _ in range(300):
            q.nack(q.lease(timeout=5), delay=3600)
        assert q.stats["dead"] == 300
        assert len(q._core._visible_at) == 0


def test_a_purge_drops_the_times_of_the_records_it_deleted(path: str) -> None:
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(range(10))
        for _ in range(10):
            q.nack(q.lease(timeout=5), delay=3600)
        assert q.purge() == 10
        assert len(q._core._visible_at) == 0


def test_many_long_delays_keep_a_bounded_number_of_times(path: str) -> None:
    # One time per nack, each kept until its delay ends: a consumer parking a backlog for
    # an hour kept one for every item.
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(range(2000))
        for _ in range(2000):
            q.nack(q.lease(timeout=5), delay=3600)
        assert q.stats["count"] == 2000
        assert len(q._core._visible_at) <= 64


def test_a_waiting_get_still_wakes_when_a_delay_ends(path: str) -> None:
    # (the times kept are rounded up, by a small part of the delay at most)
    with spoolq.SyncQueue.create(path, poll_interval=15.0) as q:
        q.put("x")
        q.nack(q.lease(timeout=5), delay=0.3)
        q.put("y")
        q.nack(q.lease(timeout=5), delay=0.6)
        started = time.monotonic()
        assert q.get(timeout=20) == "x"
        assert 0.25 <= time.monotonic() - started < 6  # well before the poll interval
        assert q.get(timeout=20) == "y"
        assert time.monotonic() - started < 7
