"""SyncQueue and Queue against the promises of docs/api.md and the behaviour of
queue.Queue and asyncio.Queue: flush() at the durabilities where nothing is pending,
get_many(None) with items the handle's counts do not know of yet, and the edges of
waiting, cancelling and closing."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import Queue, SyncQueue
from spoolq.engines import open_engine

from .failing import FailingAppend


class _HeldAppend(FailingAppend):
    """FailingAppend whose appends wait for ``go`` while ``hold`` is set (``entered`` is
    set meanwhile)."""

    def __init__(self, inner: spoolq.Engine) -> None:
        super().__init__(inner)
        self.hold = False
        self.entered = threading.Event()
        self.go = threading.Event()

    def append(self, queue: str, records: object, raw_sizes: object, now: float) -> list[int]:
        if self.hold:
            self.entered.set()
            assert self.go.wait(5), "append was held for too long"
        return super().append(queue, records, raw_sizes, now)  # type: ignore[arg-type]


# ---- flush() where nothing is pending ------------------------------------------------


@pytest.mark.parametrize("durability", ["commit", "fsync"])
def test_sync_flush_never_raises_the_write_error_of_another_threads_put(
        tmp_path: Path, durability: str) -> None:
    # A put of another thread waiting in a group commit (a write under way holds the
    # lock) was taken and written by flush(), which then raised that put's error to its
    # own caller, although at these durabilities flush() has nothing of its own to write.
    path = str(tmp_path / "q.sqlite")
    engine = FailingAppend(open_engine(path))
    with SyncQueue.create(path, engine=engine, durability=durability) as q:
        errors: list[BaseException] = []

        def put() -> None:
            try:
                q.put("theirs")
            except BaseException as exc:
                errors.append(exc)

        engine.failures = 1
        q._core.lock.acquire()  # a write under way: the put joins the next group commit
        try:
            thread = threading.Thread(target=put)
            thread.start()
            deadline = time.monotonic() + 5
            while not q._core.group.pending() and time.monotonic() < deadline:
                time.sleep(0.001)
            assert q._core.group.pending() == 1
            q.flush()  # must not raise the other thread's error
        finally:
            q._core.lock.release()
        thread.join(5)
        assert len(errors) == 1 and isinstance(errors[0], spoolq.EngineError)
        assert q.qsize() == 0


@pytest.mark.parametrize("durability", ["commit", "fsync"])
async def test_async_flush_returns_at_once_where_nothing_is_pending(
        tmp_path: Path, durability: str) -> None:
    # flush() went through the worker thread, so it waited for another task's write in
    # progress (and would have raised its error) instead of returning at once.
    path = str(tmp_path / "q.sqlite")
    engine = _HeldAppend(open_engine(path))
    async with await Queue.create(path, engine=engine, durability=durability) as q:
        engine.hold = True
        put = asyncio.create_task(q.put("theirs"))
        try:
            while not engine.entered.is_set():
                await asyncio.sleep(0.001)
            await asyncio.wait_for(q.flush(), 2)
        finally:
            engine.hold = False
            engine.go.set()
        await asyncio.wait_for(put, 5)
        assert await q.get() == "theirs"


def test_sync_flush_with_buffer_still_raises_its_write_error(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    engine = FailingAppend(open_engine(path))
    with SyncQueue.create(path, engine=engine, durability="buffer", flush_items=100,
                          flush_interval=60) as q:
        q.put("a")
        engine.failures = 1
        with pytest.raises(spoolq.EngineError):
            q.flush()
        q.flush()
        assert q.get_nowait() == "a"


# ---- get_many(None): every item ready at that moment ---------------------------------


@pytest.mark.parametrize("block", [False, True])
def test_sync_get_many_none_takes_items_another_handle_put(tmp_path: Path,
                                                           block: bool) -> None:
    # The take was sized by this handle's own counts (2 items), read again only every
    # poll_interval: the items the other handle put stayed behind.
    path = str(tmp_path / "q.sqlite")
    with SyncQueue.create(path, poll_interval=30) as mine, SyncQueue.create(path) as other:
        mine.put_many([1, 2])
        other.put_many([3, 4, 5])
        assert mine.get_many(None, block=block) == [1, 2, 3, 4, 5]


async def test_async_get_many_none_takes_items_another_handle_put(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    async with await Queue.create(path, poll_interval=30) as mine:
        with SyncQueue.create(path) as other:
            await mine.put_many([1, 2])
            other.put_many([3, 4, 5])
            assert await mine.get_many() == [1, 2, 3, 4, 5]


def test_sync_get_many_none_after_a_put_of_unknown_outcome(tmp_path: Path) -> None:
    # A put that raised Unavailable after its item was stored marks the counts stale;
    # get_many(None) took only as many as the old counts held.
    path = str(tmp_path / "q.sqlite")
    engine = _StoredThenLost(open_engine(path))
    with SyncQueue.create(path, engine=engine, poll_interval=30) as q:
        q.put(1)
        engine.lose_reply = True
        with pytest.raises(spoolq.Unavailable):
            q.put(2)
        assert q.get_many(None, block=False) == [1, 2]


class _StoredThenLost(FailingAppend):
    """Stores the records of an append, then, while ``lose_reply`` is set, raises
    Unavailable as a connection lost before the reply does."""

    def __init__(self, inner: spoolq.Engine) -> None:
        super().__init__(inner)
        self.lose_reply = False

    def append(self, queue: str, records: object, raw_sizes: object, now: float) -> list[int]:
        ids = super().append(queue, records, raw_sizes, now)  # type: ignore[arg-type]
        if self.lose_reply:
            self.lose_reply = False
            raise spoolq.Unavailable("the connection was lost before the reply")
        return ids


# ---- a get whose task is dropped after its loop stopped -------------------------------


class _HeldTake:
    """Delegates to a real engine; a take that removed records sets ``took``, then waits
    for ``gate`` while it is clear."""

    def __init__(self, inner: spoolq.Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.took = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def take(self, *args: Any) -> Any:
        recs = self._inner.take(*args)
        if recs:
            self.took.set()
            self.gate.wait(5)
        return recs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_get_dropped_with_its_stopped_loop_loses_no_item(tmp_path: Path) -> None:
    # The loop stopped and was closed while a get's take ran on the worker, and the
    # program dropped the pending task: collected, its coroutine was closed
    # (GeneratorExit) and forgot the take, whose item was then neither handed out nor
    # given back by aclose() on another loop.
    path = str(tmp_path / "q.sqlite")
    engine = _HeldTake(open_engine(path))
    loop = asyncio.new_event_loop()
    try:
        q: Queue[Any] = loop.run_until_complete(Queue.create(path, engine=engine))
        loop.run_until_complete(q.put("x"))
        engine.gate.clear()

        async def start_get() -> asyncio.Task[Any]:
            getting = asyncio.create_task(q.get())
            while not engine.took.is_set():
                await asyncio.sleep(0.001)
            return getting

        getting = loop.run_until_complete(start_get())
        engine.gate.set()
        done = threading.Event()
        q._worker.post(done.set)  # the take has returned
        assert done.wait(5)
    finally:
        loop.close()
    del getting
    gc.collect()  # the coroutine is closed, as when a program drops a pending task
    asyncio.run(q.aclose())
    with SyncQueue.create(path) as again:
        assert again.get_many(None, block=False) == ["x"]


# ---- puts waiting for room ------------------------------------------------------------


@pytest.mark.parametrize("where", [":memory:", "q.sqlite"])
async def test_async_puts_waiting_for_room_are_served_in_the_order_they_came(
        tmp_path: Path, where: str) -> None:
    # As asyncio.Queue serves its putters: each freed place went to whichever waiting put
    # ran first after the wake-up, often one whose poll had just ended, so items of puts
    # that waited came out of order and a put could wait behind later ones.
    path = where if where == ":memory:" else str(tmp_path / where)
    async with await Queue.create(path, maxsize=1, poll_interval=0.002) as q:
        await q.put("first")
        putters = []
        for i in range(8):
            putters.append(asyncio.create_task(q.put(i)))
            await asyncio.sleep(0.003)  # it waits for room, and polls meanwhile
        got = []
        for _ in range(9):
            got.append(await q.get())
            await asyncio.sleep(0.005)
        await asyncio.gather(*putters)
        assert got == ["first", *range(8)]


async def test_async_a_put_whose_timeout_passed_takes_room_out_of_turn(
        tmp_path: Path) -> None:
    # Behind a batch that waits for room for both its items, a put of one item waits its
    # turn; once its timeout has passed it takes the room there is, as put_nowait would,
    # rather than raise Full with room free.
    async with await Queue.create(str(tmp_path / "q.sqlite"), maxsize=2) as q:
        await q.put_many(["a", "b"])
        big = asyncio.create_task(q.put_many([1, 2]))
        await asyncio.sleep(0.01)  # waiting, first in line
        late = asyncio.create_task(q.put_many(["late"], timeout=0.2))
        await asyncio.sleep(0.01)
        assert await q.get() == "a"  # room for one: not for the batch
        await asyncio.wait_for(late, 5)
        assert not big.done() and q.qsize() == 2
        assert await q.get_many(2) == ["b", "late"]
        await asyncio.wait_for(big, 5)
        assert await q.get_many(2) == [1, 2]


class _GatedTake:
    """Delegates to a real engine; a take waits for ``gate`` (``taking`` is set meanwhile)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.name = inner.name
        self.gate = threading.Event()
        self.taking = threading.Event()

    def take(self, *args: Any, **kwargs: Any) -> Any:
        self.taking.set()
        self.gate.wait(10)
        return self._inner.take(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.parametrize("cancel_get", [False, True])
async def test_a_cancelled_aclose_waits_for_a_get_to_give_back_what_it_took(
        tmp_path: Path, cancel_get: bool) -> None:
    """The get's take ends after the close began (and, cancelled, the get gives its item
    back on the worker): a cancelled aclose() stopped the worker at once, and a get whose
    give-back came after that waited for ever."""
    path = str(tmp_path / "q.sqlite")
    engine = _GatedTake(open_engine(path))
    q: Queue[Any] = await Queue.create(path, engine=engine)  # type: ignore[arg-type]
    await q.put("x")
    getter = asyncio.ensure_future(q.get())
    while not engine.taking.is_set():
        await asyncio.sleep(0.005)
    closing = asyncio.ensure_future(q.aclose())
    await asyncio.sleep(0.05)
    closing.cancel()
    if cancel_get:
        getter.cancel()
        await asyncio.sleep(0.05)
    engine.gate.set()
    done, _ = await asyncio.wait([getter], timeout=10)
    assert done, "the get never ended"
    got = [] if getter.cancelled() or getter.exception() else [getter.result()]
    await asyncio.wait_for(q.aclose(), 10)
    async with await Queue.create(path) as again:
        left = await again.get_many(5, timeout=0.2) if again.qsize() else []
    assert got + left == ["x"]  # handed out or given back, once
