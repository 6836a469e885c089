"""Queue (asyncio): cancellation, wake-ups, event loops and counts at their edges."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import Queue, SyncQueue
from spoolq.engines import Engine, Lease, StoredRecord, open_engine

from .failing import FailingAppend
from .servers import ThreadedServer


@pytest.fixture(params=[":memory:", "queue.sqlite"])
def either_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One engine called on the loop (memory) and one called on the worker (SQLite)."""
    name = str(request.param)
    return name if name == ":memory:" else str(tmp_path_factory.mktemp("q") / name)


async def test_a_long_wait_keeps_no_pile_of_finished_waits(either_path: str) -> None:
    # Each poll of a waiting get or join used to leave its future behind until the next
    # put or get: an idle consumer grew the queue object by 20 futures a second.
    async with await Queue.create(either_path, poll_interval=0.002) as q:
        await q.put("x")
        getting = asyncio.create_task(q.get_many(2))
        joining = asyncio.create_task(q.join())
        await asyncio.sleep(0.2)  # about 100 polls each
        assert len(q._waiters) <= 2  # the waits in progress, nothing more
        await q.put("y")
        assert await asyncio.wait_for(getting, 5) == ["x", "y"]
        q.task_done()
        q.task_done()
        await asyncio.wait_for(joining, 5)


def test_a_queue_awaited_on_another_event_loop_refuses_and_loses_nothing(
        either_path: str) -> None:
    # A get awaited elsewhere used to take its item on the worker and never receive it.
    loop = asyncio.new_event_loop()
    try:
        q = loop.run_until_complete(Queue.create(either_path))
        loop.run_until_complete(q.put_many([1, 2, 3]))

        async def elsewhere() -> None:
            calls: list[Callable[[], Awaitable[object]]] = [
                q.get, lambda: q.get_many(2, timeout=1), lambda: q.put(4), q.peek,
                q.join, lambda: q.lease(timeout=1)]
            for call in calls:
                with pytest.raises(RuntimeError, match="event loop it was created in"):
                    await call()

        asyncio.run(elsewhere())
        assert loop.run_until_complete(q.get_many(None)) == [1, 2, 3]
        loop.run_until_complete(q.aclose())
    finally:
        loop.close()


def test_a_queue_is_closed_on_another_loop_once_its_own_has_closed(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")

    async def open_and_put() -> Queue[object]:
        q = await Queue.create(path, durability="buffer", flush_interval=60)
        await q.put("buffered")
        return q

    q = asyncio.run(open_and_put())
    asyncio.run(q.aclose())  # flushes the buffer although no task of its loop waits
    with pytest.raises(spoolq.ClosedError):
        q.put_nowait("late")
    with SyncQueue.create(path) as again:
        assert again.get_nowait() == "buffered"


async def test_an_unclosed_queue_is_collected_with_a_warning_and_closed(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    q = await Queue.create(path)
    await q.put("kept")
    worker = q._worker
    with pytest.warns(ResourceWarning, match="was not closed"):
        del q
        gc.collect()
    worker.join(5)
    assert not worker._thread.is_alive()
    with SyncQueue.create(path) as again:
        assert again.get_nowait() == "kept"


async def test_a_lease_makes_room_for_a_waiting_put_at_once(either_path: str) -> None:
    # The put used to wait for its next poll (here 30 s): a lease did not wake it.
    async with await Queue.create(either_path, maxsize=1, poll_interval=30) as q:
        await q.put(1)
        blocked = asyncio.create_task(q.put(2))
        await asyncio.sleep(0.02)
        msg = await q.lease()
        await asyncio.wait_for(blocked, 5)
        await q.ack(msg)
        assert await q.get() == 2


async def test_a_get_many_holding_a_part_batch_lets_waiting_puts_fill_it(
        either_path: str) -> None:
    async with await Queue.create(either_path, maxsize=2, poll_interval=30) as q:
        await q.put_many([1, 2])
        putting = asyncio.create_task(q.put_many([3, 4]))  # waits for room
        assert await asyncio.wait_for(q.get_many(4, timeout=20), 5) == [1, 2, 3, 4]
        await putting


@pytest.mark.parametrize("nowait", [False, True])
async def test_a_buffered_put_wakes_a_waiting_get_at_once(either_path: str,
                                                          nowait: bool) -> None:
    # The get used to wait for its next poll or the buffer's flush (here 30 s each).
    async with await Queue.create(either_path, durability="buffer", poll_interval=30,
                                  flush_interval=30) as q:
        getting = asyncio.create_task(q.get())
        await asyncio.sleep(0.02)
        if nowait:
            q.put_nowait("x")
        else:
            await q.put("x")
        assert await asyncio.wait_for(getting, 5) == "x"


class _Gated:
    """Delegates to a real engine. Once ``holding``, a take that found records waits for
    ``taken`` to be let go before it returns (with ``holding_empty``, one that found
    none), and a restore waits for ``restoring``; with ``holding_append``, an append
    sets ``appending`` and waits for ``appended``."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.holding = False
        self.holding_empty = False  # hold a take that found nothing instead
        self.took = threading.Event()
        self.taken = threading.Event()
        self.restoring = threading.Event()
        self.holding_append = False
        self.appending = threading.Event()
        self.appended = threading.Event()

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        if self.holding_append:
            self.appending.set()
            self.appended.wait(5)
        return self._inner.append(queue, records, raw_sizes, now)

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        recs = self._inner.take(queue, n, now, lease)
        if (self.holding and recs) or (self.holding_empty and not recs):
            self.took.set()
            self.taken.wait(5)
        return recs

    def restore(self, queue: str, records: Sequence[StoredRecord]) -> None:
        if self.holding:
            self.restoring.wait(5)
        self._inner.restore(queue, records)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_an_item_a_cancelled_get_gives_back_keeps_its_room(tmp_path: Path) -> None:
    # The item was out of the counts until the worker had restored it: a put found room
    # meanwhile, and the give-back then filled the queue beyond maxsize.
    path = str(tmp_path / "q.sqlite")
    engine = _Gated(open_engine(path))
    async with await Queue.create(path, engine=engine, maxsize=1) as q:
        await q.put("a")
        engine.holding = True
        try:
            getting = asyncio.create_task(q.get())
            while not engine.took.is_set():
                await asyncio.sleep(0.001)
            assert q.qsize() == 1  # on its way to the get: not gone until the get returns
            getting.cancel()
            engine.taken.set()
            with pytest.raises(asyncio.CancelledError):
                await getting
            for _ in range(20):  # the give-back is on the worker, held at the restore
                assert q.qsize() == 1 and q.full() and not q.empty()
                assert q.stats["count"] == 1
                with pytest.raises(spoolq.Full):
                    q.put_nowait("b")
                await asyncio.sleep(0.001)
            putting = asyncio.create_task(q.put("b"))
            await asyncio.sleep(0.01)
            assert not putting.done()
        finally:
            engine.restoring.set()
        engine.holding = False
        assert q.qsize() == 1
        assert await q.get() == "a"
        await asyncio.wait_for(putting, 5)
        assert await q.get() == "b"
        assert q.qsize() == 0


class _SlowClose:
    """Delegates to a real engine whose close waits for ``closing`` to be let go."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.closing = threading.Event()

    def close(self) -> None:
        self.closing.wait(5)
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_second_aclose_returns_once_the_file_is_closed(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    engine = _SlowClose(open_engine(path))
    q = await Queue.create(path, engine=engine)
    await q.put("kept")
    msg = await q.lease()
    try:
        first = asyncio.create_task(q.aclose())
        await asyncio.sleep(0)
        second = asyncio.create_task(q.aclose())
        await asyncio.sleep(0.02)
        assert not second.done()  # it used to return while the first was still closing
    finally:
        engine.closing.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    with SyncQueue.create(path) as again:  # the lease was released by the close
        assert again.get_nowait() == msg.item


async def test_an_aclose_cancelled_while_a_get_gives_back_still_closes(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    q = await Queue.create(path)
    await q.put_many(["kept", "waiting"])
    msg = await q.lease()
    await q.get()
    getting = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(q.aclose())
    await asyncio.sleep(0)  # it waits for the get to end
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    with pytest.raises(spoolq.QueueShutDown):
        await getting
    await asyncio.wait_for(q.aclose(), 5)  # returns once the file is closed
    q._worker.join(5)
    assert not q._worker._thread.is_alive()
    with SyncQueue.create(path) as again:
        assert again.get_nowait() == msg.item


async def test_a_buffered_put_wakes_a_get_long_polling_a_server() -> None:
    # The get blocks in the remote engine's long-poll, which a put held in this client's
    # buffer never reaches: it used to wait for the long-poll's end (5 s) or the flush.
    with ThreadedServer(":memory:") as server:
        assert server.server is not None
        async with await Queue.create(f"{server.server.url}/jobs", durability="buffer",
                                      flush_interval=30) as q:
            getting = asyncio.create_task(q.get())
            await asyncio.sleep(0.1)  # in the long-poll by now
            await q.put("x")
            assert await asyncio.wait_for(getting, 2) == "x"


async def test_a_timeout_holds_while_a_cancelled_get_gives_back(tmp_path: Path) -> None:
    # A get waiting for a give-back used to wait for it whatever its timeout.
    path = str(tmp_path / "q.sqlite")
    engine = _Gated(open_engine(path))
    async with await Queue.create(path, engine=engine) as q:
        await q.put("a")
        engine.holding = True
        try:
            getting = asyncio.create_task(q.get())
            while not engine.took.is_set():
                await asyncio.sleep(0.001)
            getting.cancel()
            engine.taken.set()
            with pytest.raises(asyncio.CancelledError):
                await getting
            with pytest.raises(spoolq.Empty):  # the restore is held: "a" is not back
                await asyncio.wait_for(q.get_many(1, timeout=0.05), 2)
            with pytest.raises(spoolq.Empty):
                await asyncio.wait_for(q.lease(timeout=0), 2)
        finally:
            engine.restoring.set()
        assert await q.get_many(1, timeout=2) == ["a"]


async def test_a_put_while_a_get_s_take_finds_nothing_reaches_that_get(tmp_path: Path) -> None:
    # A get's take finds nothing (another handle took the item its counts promised)
    # while a put is written. The put's wake-up found no get waiting, and the get then
    # slept a whole poll interval (here 30 s) although an item was ready.
    path = str(tmp_path / "q.sqlite")
    engine = _Gated(open_engine(path))
    async with await Queue.create(path, engine=engine, poll_interval=30) as q:
        await q.put("a")
        with SyncQueue.create(path) as other:
            assert other.get_nowait() == "a"  # q's counts still say one item is ready
        engine.holding_empty = True
        try:
            getting = asyncio.create_task(q.get())
            while not engine.took.is_set():  # its take found nothing; it is held
                await asyncio.sleep(0.001)
            engine.holding_empty = False
            putting = asyncio.create_task(q.put("b"))
            await asyncio.sleep(0.01)  # its write waits behind the held take
        finally:
            engine.taken.set()
        await putting
        assert await asyncio.wait_for(getting, 5) == "b"


@pytest.mark.parametrize("call", ["peek", "purge"])
async def test_peek_and_purge_see_the_item_a_cancelled_get_gives_back(tmp_path: Path,
                                                                      call: str) -> None:
    # They used to run on the worker before the give-back: peek missed the head item,
    # and purge left it to come back into the purged queue.
    path = str(tmp_path / "q.sqlite")
    engine = _Gated(open_engine(path))
    async with await Queue.create(path, engine=engine) as q:
        await q.put_many(["a", "b"])
        engine.holding = True
        try:
            getting = asyncio.create_task(q.get())
            while not engine.took.is_set():  # "a" is taken; the take's return is held
                await asyncio.sleep(0.001)
            getting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await getting
            calling = asyncio.create_task(q.peek(5) if call == "peek" else q.purge())
            await asyncio.sleep(0.01)
        finally:
            engine.taken.set()
            engine.restoring.set()
        if call == "peek":
            assert await calling == ["a", "b"]
            assert await q.get_many(2) == ["a", "b"]
        else:
            assert await calling == 2
            assert await q.peek(5) == [] and q.qsize() == 0


async def test_a_failed_group_commit_fails_each_put_and_leaves_the_queue_usable(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    engine = FailingAppend(open_engine(path))
    async with await Queue.create(path, engine=engine, maxsize=20) as q:
        await q.put("before")
        engine.failures = 100  # every transaction the puts are written in fails
        results = await asyncio.gather(*(q.put(i) for i in range(10)), q.put_many([10, 11]),
                                       return_exceptions=True)
        engine.failures = 0
        assert all(isinstance(r, spoolq.EngineError) for r in results)
        assert q.qsize() == 1 and q.stats["unfinished"] == 1 and await q.peek(20) == ["before"]
        await asyncio.gather(*(q.put(i) for i in range(3)))
        assert await q.get_many(4) == ["before", 0, 1, 2]
        for _ in range(4):
            q.task_done()
        await asyncio.wait_for(q.join(), 5)


async def test_a_put_cancelled_before_its_group_commit_is_not_stored(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    engine = _Gated(open_engine(path))
    async with await Queue.create(path, engine=engine, maxsize=2) as q:
        engine.holding_append = True
        first = asyncio.create_task(q.put("a"))
        while not engine.appending.is_set():  # "a" is being written
            await asyncio.sleep(0.001)
        second = asyncio.create_task(q.put("b"))
        for _ in range(5):  # "b" waits for the next group commit
            await asyncio.sleep(0)
        assert q.qsize() == 2 and q.full()
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert q.qsize() == 1 and not q.full()
        engine.appended.set()
        await first
        assert await q.get() == "a"
        q.task_done()
        await asyncio.wait_for(q.join(), 2)  # "b" is not waiting to be processed
        with pytest.raises(spoolq.Empty):
            q.get_nowait()
    async with await Queue.create(path) as q:
        assert q.qsize() == 0


async def test_a_finished_call_is_not_held_back_by_a_slow_one_queued_behind() -> None:
    from spoolq.worker import Worker

    worker = Worker(asyncio.get_running_loop(), "test-worker")
    queued = threading.Event()
    release_slow = threading.Event()
    try:
        quick = worker.submit(lambda: queued.wait(5) and "quick")
        slow = worker.submit(release_slow.wait, 5)
        queued.set()  # the slow call is queued before the quick one returns
        assert await asyncio.wait_for(quick, 2) == "quick"
        assert not slow.done()
        release_slow.set()
        assert await asyncio.wait_for(slow, 5) is True
    finally:
        release_slow.set()
        worker.stop()
        worker.join(5)
