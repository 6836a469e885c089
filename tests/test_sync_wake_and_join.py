"""SyncQueue's waiting calls look again when a nack's delay ends; join() and task_done()
count unfinished tasks as queue.Queue and asyncio.Queue do."""

from __future__ import annotations

import asyncio
import queue
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import spoolq

from .conftest import SHARED_ENGINES, queue_path
from .test_join_across import CONSUMER

ENGINES = ["lmdb", "memory", "sqlite"]


@pytest.fixture(params=ENGINES)
def path(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return queue_path(tmp_path, str(request.param))


def _nacked(q: spoolq.SyncQueue[str], delay: float) -> float:
    """Put, lease and nack one item with ``delay``; return when the nack returned."""
    q.put("x")
    msg = q.lease(timeout=5)
    q.nack(msg, delay=delay)
    return time.monotonic()


# ---- a waiting call and the end of a nack's delay ---------------------------------------


@pytest.mark.parametrize("call", ["get", "lease", "get_many", "get_many_n", "lease_many"])
def test_a_waiting_call_takes_a_nacked_item_when_its_delay_ends(path: str, call: str) -> None:
    # It looked again only after the poll interval (10 s here), however short the delay.
    with spoolq.SyncQueue.create(path, poll_interval=10) as q:
        nacked = _nacked(q, 0.2)
        if call == "get":
            assert q.get(timeout=10) == "x"
        elif call == "lease":
            assert q.lease(timeout=10).item == "x"
        elif call == "get_many":
            assert q.get_many(timeout=10) == ["x"]
        elif call == "get_many_n":
            assert q.get_many(1, timeout=10) == ["x"]
        else:
            assert [m.item for m in q.lease_many(5, timeout=10)] == ["x"]
        took = time.monotonic() - nacked
        assert 0.15 <= took < 5  # well before the poll interval


def test_a_get_already_waiting_takes_an_item_nacked_meanwhile_when_its_delay_ends(
        path: str) -> None:
    with spoolq.SyncQueue.create(path, poll_interval=10) as q:
        q.put("x")
        msg = q.lease(timeout=5)
        got: list[object] = []
        getter = threading.Thread(target=lambda: got.append(q.get(timeout=10)))
        getter.start()
        time.sleep(0.2)  # the get waits on an empty queue
        q.nack(msg, delay=0.3)
        nacked = time.monotonic()
        getter.join(10)
        took = time.monotonic() - nacked
        assert got == ["x"]
        assert 0.25 <= took < 5


def test_several_delays_each_wake_the_waiting_get(path: str) -> None:
    with spoolq.SyncQueue.create(path, poll_interval=10) as q:
        q.put_many(["a", "b"])
        first, second = q.lease_many(2, timeout=5)
        q.nack(second, delay=0.6)
        q.nack(first, delay=0.2)
        started = time.monotonic()
        assert q.get(timeout=10) == "a"
        assert time.monotonic() - started < 5
        assert q.get(timeout=10) == "b"
        assert time.monotonic() - started < 6


def test_a_timeout_shorter_than_the_delay_still_raises_empty(path: str) -> None:
    with spoolq.SyncQueue.create(path, poll_interval=10) as q:
        _nacked(q, 1.0)
        started = time.monotonic()
        with pytest.raises(spoolq.Empty):
            q.get(timeout=0.3)
        assert time.monotonic() - started < 3
        assert q.get(timeout=5) == "x"


# ---- task_done and join count as queue.Queue does ---------------------------------------


def _join_within(q: spoolq.SyncQueue[object], seconds: float) -> bool:
    """Whether q.join() returns within ``seconds`` (it goes on in a daemon thread if not)."""
    t = threading.Thread(target=q.join, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive()


def test_task_done_before_the_get_it_stands_for_lets_join_return(path: str) -> None:
    with spoolq.SyncQueue.create(path, poll_interval=0.05) as q:
        q.put("a")
        q.put("b")
        q.task_done()
        assert q.stats["unfinished"] == 1
        assert q.get(timeout=5) == "a"
        assert q.get(timeout=5) == "b"
        assert q.stats["unfinished"] == 1
        q.task_done()
        assert q.stats["unfinished"] == 0
        assert _join_within(q, 5)
        with pytest.raises(ValueError):
            q.task_done()


def test_task_done_ahead_of_every_get_lets_join_return(path: str) -> None:
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(["a", "b"])
        q.task_done()
        q.task_done()
        assert _join_within(q, 5)
        with pytest.raises(ValueError):
            q.task_done()
        assert q.get_many(2, timeout=5) == ["a", "b"]
        assert q.stats["unfinished"] == 0
        with pytest.raises(ValueError):
            q.task_done()


def _random_ops(seed: int, n: int = 200) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(["put", "put", "get", "task_done", "task_done", "join"])
            for _ in range(n)]


@pytest.mark.parametrize("seed", range(4))
def test_sync_unfinished_counts_as_queue_queue(path: str, seed: int) -> None:
    ref: queue.Queue[int] = queue.Queue()
    with spoolq.SyncQueue.create(path) as q:
        for step, op in enumerate(_random_ops(seed)):
            if op == "put":
                ref.put(step)
                q.put(step)
            elif op == "get":
                try:
                    expected = ref.get_nowait()
                except queue.Empty:
                    with pytest.raises(queue.Empty):
                        q.get_nowait()
                else:
                    assert q.get(timeout=5) == expected
            elif op == "task_done":
                try:
                    ref.task_done()
                except ValueError:
                    with pytest.raises(ValueError):
                        q.task_done()
                else:
                    q.task_done()
            else:
                assert _join_within(q, 0.5 if not ref.unfinished_tasks else 0.0) == (
                    ref.unfinished_tasks == 0), (step, ref.unfinished_tasks)
            assert q.stats["unfinished"] == ref.unfinished_tasks, (step, op)


@pytest.mark.parametrize("seed", range(4))
def test_async_unfinished_counts_as_asyncio_queue(path: str, seed: int) -> None:
    async def run() -> None:
        ref: asyncio.Queue[int] = asyncio.Queue()
        unfinished = 0  # asyncio.Queue's own count, kept as it keeps it
        async with await spoolq.Queue.create(path) as q:
            for step, op in enumerate(_random_ops(seed)):
                if op == "put":
                    ref.put_nowait(step)
                    unfinished += 1
                    await q.put(step)
                elif op == "get":
                    try:
                        expected = ref.get_nowait()
                    except asyncio.QueueEmpty:
                        with pytest.raises(asyncio.QueueEmpty):
                            q.get_nowait()
                    else:
                        assert await asyncio.wait_for(q.get(), 5) == expected
                elif op == "task_done":
                    try:
                        ref.task_done()
                    except ValueError:
                        with pytest.raises(ValueError):
                            q.task_done()
                    else:
                        unfinished -= 1
                        q.task_done()
                else:
                    joining = asyncio.ensure_future(q.join())
                    await asyncio.sleep(0.05)
                    assert joining.done() == (unfinished == 0), step
                    joining.cancel()
                assert q.stats["unfinished"] == unfinished, (step, op)

    asyncio.run(run())


def test_async_task_done_before_the_get_lets_join_return(path: str) -> None:
    async def run() -> None:
        async with await spoolq.Queue.create(path) as q:
            await q.put("a")
            await q.put("b")
            q.task_done()
            assert await q.get() == "a"
            assert await q.get() == "b"
            q.task_done()
            await asyncio.wait_for(q.join(), 5)
            with pytest.raises(ValueError):
                q.task_done()

    asyncio.run(run())



PRODUCER = textwrap.dedent("""
    import sys, spoolq
    with spoolq.SyncQueue.create(sys.argv[1]) as q:
        q.put("theirs")
""")


@pytest.mark.parametrize("engine", SHARED_ENGINES)
def test_task_done_ahead_of_items_another_process_took_does_not_cover_later_gets(
        tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path, engine)
    with spoolq.SyncQueue.create(path, poll_interval=0.05) as q:
        q.put_many(["a", "b"])
        q.task_done()
        q.task_done()
        assert _join_within(q, 5)
        subprocess.run([sys.executable, "-c", CONSUMER, path, "2"], check=True, timeout=30)
        with pytest.raises(spoolq.Empty):
            q.get_nowait()  # this handle sees the queue empty
        subprocess.run([sys.executable, "-c", PRODUCER, path], check=True, timeout=30)
        # This handle's task_done calls stood for "a" and "b", which another process
        # took: the item it takes now is unfinished until its own task_done.
        assert q.get(timeout=5) == "theirs"
        assert q.stats["unfinished"] == 1
        assert not _join_within(q, 0.3)
        q.task_done()
        assert _join_within(q, 5)
        with pytest.raises(ValueError):
            q.task_done()


def test_joins_waiting_in_other_threads_return_when_the_queue_closes(path: str) -> None:
    # A join() that read the closed flag just before close() set it went on to read the
    # file's counts once the file was closed: it raised ClosedError instead of returning,
    # as shutdown(immediate=True) makes it.
    errors: list[BaseException] = []

    def joiner(q: spoolq.SyncQueue[int]) -> None:
        try:
            q.join()
        except BaseException as exc:
            errors.append(exc)

    for _ in range(40):
        q: spoolq.SyncQueue[int] = spoolq.SyncQueue.create(path, poll_interval=0.001)
        q.put_many(range(10))
        threads = [threading.Thread(target=joiner, args=(q,)) for _ in range(20)]
        for thread in threads:
            thread.start()
        time.sleep(0.01)
        q.close()
        for thread in threads:
            thread.join(5)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []


def test_delays_that_ended_are_not_kept(path: str) -> None:
    # Every nack with a delay kept its time for good when no get waited for it (an async
    # Queue never asks the core for it): memory grew with each one.
    with spoolq.SyncQueue.create(path) as q:
        q.put("x")
        for _ in range(50):
            q.nack(q.lease(timeout=5), delay=0.001)
            time.sleep(0.01)
        # the last nacks' times, rounded up to a 5 ms step, may not have passed yet
        assert len(q._core._visible_at) <= 3


@pytest.mark.parametrize("settle", ["nack into the dead letters", "purge"])
def test_join_returns_when_a_settle_of_this_handle_finishes_the_last_item(
        path: str, settle: str) -> None:
    # join() waits on the queue's condition for up to a poll interval; a nack that moves
    # the last item to the dead letters, or a purge, wakes it as an ack does.
    with spoolq.SyncQueue.create(path, poll_interval=30.0, max_attempts=1) as q:
        q.put("x")
        msg = q.lease(timeout=5)
        joined = threading.Event()
        waiter = threading.Thread(target=lambda: (q.join(), joined.set()), daemon=True)
        waiter.start()
        time.sleep(0.2)  # join() is asleep
        if settle == "purge":
            q.purge()
        else:
            q.nack(msg)
            assert q.stats["dead"] == 1
        assert joined.wait(5), f"join() still waits after the {settle}"
