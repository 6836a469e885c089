"""Queue against asyncio.Queue and SyncQueue against queue.Queue, scenario by scenario,
on the memory engine and on SQLite files (durability "commit"; the async queue also with
calls_on_loop): cancelled waits, the order waiters are served in, task_done() and join(),
timeouts, sizes with maxsize, get_many/put_many edge values, shutdown() as Python 3.13
defines it, and what a queue does once closed. Where Python 3.11 has the scenario, the
standard queue runs it too and both must answer alike."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from spoolq import ClosedError, Empty, Full, Queue, QueueShutDown, SyncQueue

SYNC_TARGETS = ["memory", "sqlite"]
ASYNC_TARGETS = ["memory", "sqlite", "sqlite-on-loop"]


def _path(tmp_path: Path, target: str) -> str:
    return ":memory:" if target == "memory" else os.fspath(tmp_path / "q.sqlite")


async def _aqueue(tmp_path: Path, target: str, **settings: Any) -> Queue[Any]:
    if target == "sqlite-on-loop":
        settings["calls_on_loop"] = True
    return await Queue.create(_path(tmp_path, target), durability="commit", **settings)


def _squeue(tmp_path: Path, target: str, **settings: Any) -> SyncQueue[Any]:
    return SyncQueue.create(_path(tmp_path, target), durability="commit", **settings)


async def _outcome(aw: Awaitable[Any], timeout: float = 2.0) -> Any:
    """The result of ``aw``, or the name of the exception it raised."""
    try:
        return await asyncio.wait_for(aw, timeout)
    except BaseException as exc:  # the name is the outcome compared
        return type(exc).__name__


def _sync_outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:
        return type(exc).__name__


def _exception_name(name: str) -> str:
    """spoolq's exceptions by the names of the standard ones they stand for."""
    return {"QueueEmpty": "Empty", "QueueFull": "Full"}.get(name, name)


# ---- asyncio.Queue -----------------------------------------------------------------------


async def _woken_putter_cancelled(q: Any) -> list[Any]:
    """Two puts wait for room; room frees up and the first, woken, is cancelled: the
    second takes the room, and the cancelled item is not stored."""
    await q.put("a")
    first = asyncio.create_task(q.put("b"))
    second = asyncio.create_task(q.put("c"))
    await asyncio.sleep(0.05)
    taken = q.get_nowait()
    first.cancel()
    out = [taken, await _outcome(first), await _outcome(second)]
    await asyncio.sleep(0.05)
    out += [q.qsize(), await _outcome(q.get(), 0.5), await _outcome(q.get(), 0.2)]
    return [_exception_name(o) if isinstance(o, str) else o for o in out]


async def _woken_getter_cancelled(q: Any) -> list[Any]:
    """Two gets wait; an item comes and the first, woken, is cancelled: the second
    receives the item."""
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await asyncio.sleep(0.05)
    q.put_nowait("x")
    first.cancel()
    return [await _outcome(first), await _outcome(second), q.qsize()]


async def _getters_in_order(q: Any) -> list[Any]:
    got: list[tuple[int, Any]] = []

    async def consumer(i: int) -> None:
        got.append((i, await q.get()))

    tasks = [asyncio.create_task(consumer(i)) for i in range(5)]
    await asyncio.sleep(0.05)
    for i in range(5):
        await q.put(i)
    await asyncio.gather(*tasks)
    return got


async def _putters_in_order(q: Any) -> list[Any]:
    await q.put(-1)
    tasks = []
    for i in range(4):
        tasks.append(asyncio.create_task(q.put(i)))
        await asyncio.sleep(0.01)
    got = [await q.get() for _ in range(5)]
    await asyncio.gather(*tasks)
    return got


async def _task_done_counts(q: Any) -> list[Any]:
    out: list[Any] = [_sync_outcome(q.task_done)]
    await q.put(1)
    await q.put(2)
    out.append(_sync_outcome(q.task_done))  # ahead of its get, as asyncio.Queue counts it
    await q.get()
    await q.get()
    out += [_sync_outcome(q.task_done), _sync_outcome(q.task_done)]
    out.append(await _outcome(q.join(), 1.0))
    return out


async def _sizes_and_nowait(q: Any) -> list[Any]:
    out: list[Any] = [(q.qsize(), q.empty(), q.full())]
    await q.put(1)
    q.put_nowait(2)
    out.append((q.qsize(), q.empty(), q.full()))
    out.append(_exception_name(_sync_outcome(lambda: q.put_nowait(3))))
    out.append(await _outcome(q.put(3), 0.1))
    out += [q.get_nowait(), q.get_nowait(), _exception_name(_sync_outcome(q.get_nowait))]
    out.append((q.qsize(), q.empty(), q.full()))
    return out


_MAXSIZE: dict[Any, int] = {_getters_in_order: 0, _task_done_counts: 0, _sizes_and_nowait: 2}


@pytest.mark.parametrize("scenario", [_woken_putter_cancelled, _woken_getter_cancelled,
                                      _getters_in_order, _putters_in_order,
                                      _task_done_counts, _sizes_and_nowait],
                         ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("target", ASYNC_TARGETS)
async def test_async_queue_answers_as_asyncio_queue(
        tmp_path: Path, target: str, scenario: Callable[[Any], Awaitable[list[Any]]]) -> None:
    maxsize = _MAXSIZE.get(scenario, 1)
    expected = await scenario(asyncio.Queue(maxsize=maxsize))
    q = await _aqueue(tmp_path, target, maxsize=maxsize)
    try:
        assert await scenario(q) == expected
    finally:
        await q.aclose()


@pytest.mark.parametrize("target", ASYNC_TARGETS)
async def test_async_cancelled_gets_lose_no_item_and_keep_the_order(
        tmp_path: Path, target: str) -> None:
    q = await _aqueue(tmp_path, target)
    try:
        async def produce() -> None:
            for i in range(150):
                await q.put(i)
                if i % 7 == 0:
                    await asyncio.sleep(0.001)

        producer = asyncio.create_task(produce())
        got: list[int] = []
        while len(got) < 150:
            with contextlib.suppress(TimeoutError):
                got.append(await asyncio.wait_for(q.get(), 0.0005))
        await producer
        assert got == list(range(150))
        assert q.qsize() == 0
    finally:
        await q.aclose()


@pytest.mark.parametrize("target", ASYNC_TARGETS)
async def test_async_cancelled_put_many_stores_nothing(tmp_path: Path, target: str) -> None:
    q = await _aqueue(tmp_path, target, maxsize=2)
    try:
        await q.put(1)
        put = asyncio.create_task(q.put_many([2, 3]))
        await asyncio.sleep(0.05)
        q.get_nowait()
        put.cancel()
        assert await _outcome(put) == "CancelledError"
        await asyncio.sleep(0.05)
        assert (q.qsize(), await q.peek(5)) == (0, [])
    finally:
        await q.aclose()


@pytest.mark.parametrize("target", ASYNC_TARGETS)
async def test_async_get_many_edges(tmp_path: Path, target: str) -> None:
    q = await _aqueue(tmp_path, target)
    try:
        assert await _outcome(q.get_many(0)) == "ValueError"
        assert await _outcome(q.get_many(True)) == "TypeError"
        assert await _outcome(q.get_many(2, timeout=-1)) == "ValueError"
        assert await _outcome(q.get_many(2, timeout=float("inf"))) == "ValueError"
        assert await _outcome(q.get_many(2, timeout=0)) == "Empty"
        await q.put(1)
        assert await q.get_many(3, timeout=0.05) == [1]  # what arrived, at least one
        await q.put_many(iter([2, 3]))
        assert await q.get_many(None, timeout=0) == [2, 3]
        await q.put_many([])
        assert q.qsize() == 0
        # A cancelled get_many(n) holding part of its batch gives it back, in place.
        waiting = asyncio.create_task(q.get_many(3))
        await asyncio.sleep(0.02)
        await q.put_many([4, 5])
        await asyncio.sleep(0.05)
        waiting.cancel()
        assert await _outcome(waiting) == "CancelledError"
        await q.put(6)
        assert await _outcome(q.get_many(3), 1.0) == [4, 5, 6]
    finally:
        await q.aclose()


@pytest.mark.parametrize("target", ASYNC_TARGETS)
async def test_async_shutdown_as_python_3_13_defines_it(tmp_path: Path, target: str) -> None:
    q = await _aqueue(tmp_path, target, maxsize=1)
    try:
        await q.put(1)
        blocked_put = asyncio.create_task(q.put(2))
        blocked_join = asyncio.create_task(q.join())
        await asyncio.sleep(0.05)
        q.shutdown()
        # Blocked and later puts raise; gets drain, then raise; join waits for task_done.
        assert await _outcome(blocked_put) == "QueueShutDown"
        assert await _outcome(q.put(3)) == "QueueShutDown"
        assert _sync_outcome(lambda: q.put_nowait(3)) == "QueueShutDown"
        assert await _outcome(q.put_many([])) == "QueueShutDown"
        assert not blocked_join.done()
        assert await q.get() == 1
        assert await _outcome(q.get()) == "QueueShutDown"
        assert _sync_outcome(q.get_nowait) == "QueueShutDown"
        q.task_done()
        assert await _outcome(blocked_join) is None
        assert _sync_outcome(q.task_done) == "ValueError"
    finally:
        await q.aclose()


@pytest.mark.parametrize("target", ASYNC_TARGETS)
async def test_async_immediate_shutdown_wakes_getters_and_join(tmp_path: Path,
                                                              target: str) -> None:
    q = await _aqueue(tmp_path, target)
    try:
        getters = [asyncio.create_task(q.get()) for _ in range(2)]
        await asyncio.sleep(0.05)
        await q.put(1)
        await q.put(2)
        await asyncio.sleep(0.05)
        await q.put(3)
        joining = asyncio.create_task(q.join())
        await asyncio.sleep(0.05)
        q.shutdown(immediate=True)
        assert [await _outcome(g) for g in getters] == [1, 2]
        assert await _outcome(joining) is None  # returns with items unfinished
        assert await _outcome(q.get()) == "QueueShutDown"
        assert _sync_outcome(q.get_nowait) == "QueueShutDown"
        assert await _outcome(q.put(4)) == "QueueShutDown"
        assert q.qsize() == 1  # nothing persisted is deleted
    finally:
        await q.aclose()
    reopened = await _aqueue(tmp_path, target) if target != "memory" else None
    if reopened is not None:
        try:
            assert await reopened.get_many(None, timeout=1) == [3]
        finally:
            await reopened.aclose()


@pytest.mark.parametrize("target", ASYNC_TARGETS)
async def test_async_calls_once_closed(tmp_path: Path, target: str) -> None:
    q = await _aqueue(tmp_path, target, maxsize=2)
    await q.put(1)
    await q.put(2)
    waiting_put = asyncio.create_task(q.put(3))
    waiting_join = asyncio.create_task(q.join())
    await asyncio.sleep(0.05)
    await q.aclose()
    assert await _outcome(waiting_put) == "QueueShutDown"
    assert await _outcome(waiting_join) is None
    for call in (q.put(1), q.get(), q.get_many(2), q.put_many([]), q.peek(), q.lease(),
                 q.flush()):
        assert await _outcome(call) == "ClosedError"
    for fn in (lambda: q.put_nowait(1), q.get_nowait):
        with pytest.raises(ClosedError):
            fn()
    assert (q.qsize(), q.full(), q.stats["count"]) == (2, True, 2)
    assert await _outcome(q.join()) is None
    q.shutdown()
    await q.aclose()  # twice: harmless


# ---- queue.Queue -------------------------------------------------------------------------


def _sync_timeouts(q: Any) -> list[Any]:
    out: list[Any] = []
    for fn in (lambda: q.get(timeout=-1), lambda: q.get(block=False, timeout=-1),
               lambda: q.put(1, timeout=-1), lambda: q.put(1, block=False, timeout=-1)):
        out.append(_sync_outcome(fn))
    out.append(q.get(timeout=0))
    for fn in (lambda: q.get(timeout=0), lambda: q.get(timeout=0.05)):
        out.append(_sync_outcome(fn))
    q.put(2)
    for fn in (lambda: q.put(3, timeout=0), lambda: q.put(3, timeout=0.05),
               lambda: q.put(3, block=False), lambda: q.put_nowait(3)):
        out.append(_sync_outcome(fn))
    out.append((q.qsize(), q.empty(), q.full()))
    return out


def _sync_task_done(q: Any) -> list[Any]:
    out: list[Any] = [_sync_outcome(q.task_done)]
    q.put(1)
    out.append(_sync_outcome(q.task_done))
    out.append(q.get())
    out.append(_sync_outcome(q.task_done))
    q.join()
    return out


def _sync_getters_in_order(q: Any) -> list[Any]:
    got: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def consumer(i: int) -> None:
        item = q.get(timeout=5)
        with lock:
            got.append((i, item))

    threads = []
    for i in range(4):
        threads.append(threading.Thread(target=consumer, args=(i,)))
        threads[-1].start()
        time.sleep(0.05)
    for i in range(4):
        q.put(i)
        time.sleep(0.05)
    for t in threads:
        t.join(5)
    return sorted(got)


@pytest.mark.parametrize("scenario", [_sync_timeouts, _sync_task_done, _sync_getters_in_order],
                         ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("target", SYNC_TARGETS)
def test_sync_queue_answers_as_queue_queue(tmp_path: Path, target: str,
                                           scenario: Callable[[Any], list[Any]]) -> None:
    maxsize = 0 if scenario is _sync_getters_in_order else 1
    expected = scenario(queue.Queue(maxsize=maxsize))
    q = _squeue(tmp_path, target, maxsize=maxsize)
    try:
        assert scenario(q) == expected
    finally:
        q.close()


@pytest.mark.parametrize("target", SYNC_TARGETS)
def test_sync_blocked_calls_at_shutdown(tmp_path: Path, target: str) -> None:
    q = _squeue(tmp_path, target, maxsize=1)
    outcomes: dict[str, Any] = {}

    def run(name: str, fn: Callable[[], Any]) -> threading.Thread:
        t = threading.Thread(target=lambda: outcomes.__setitem__(name, _sync_outcome(fn)))
        t.start()
        return t

    try:
        q.put(1)
        threads = [run("put", lambda: q.put(2)), run("join", q.join)]
        time.sleep(0.1)
        q.shutdown()
        threads[0].join(2)
        assert outcomes["put"] == "QueueShutDown"
        assert threads[1].is_alive()  # join waits for task_done, as in Python 3.13
        assert _sync_outcome(lambda: q.put_nowait(3)) == "QueueShutDown"
        assert _sync_outcome(lambda: q.put_many([])) == "QueueShutDown"
        assert q.get() == 1
        getters = [run(f"get{i}", q.get) for i in range(2)]
        for t in getters:
            t.join(2)
        assert (outcomes["get0"], outcomes["get1"]) == ("QueueShutDown", "QueueShutDown")
        assert _sync_outcome(q.get_nowait) == "QueueShutDown"
        q.task_done()
        threads[1].join(2)
        assert outcomes["join"] is None
    finally:
        q.close()


@pytest.mark.parametrize("target", SYNC_TARGETS)
def test_sync_immediate_shutdown_and_close(tmp_path: Path, target: str) -> None:
    q = _squeue(tmp_path, target)
    q.put_many([1, 2])
    joined = threading.Thread(target=q.join)
    joined.start()
    time.sleep(0.05)
    q.shutdown(immediate=True)
    joined.join(2)
    assert not joined.is_alive()
    assert _sync_outcome(q.get_nowait) == "QueueShutDown"
    assert _sync_outcome(lambda: q.get(timeout=1)) == "QueueShutDown"
    assert q.qsize() == 2  # nothing persisted is deleted
    q.close()
    for fn in (lambda: q.put(1), q.get, lambda: q.get_many(2), q.peek,
               lambda: q.put_many([]), lambda: q.get(block=False), q.flush):
        with pytest.raises(ClosedError):
            fn()
    assert (q.qsize(), q.stats["count"]) == (2, 2)
    q.join()  # returns at once
    q.close()


@pytest.mark.parametrize("target", SYNC_TARGETS)
def test_sync_get_many_and_put_many_edges(tmp_path: Path, target: str) -> None:
    q = _squeue(tmp_path, target, maxsize=3)
    try:
        for fn, error in ((lambda: q.get_many(0), ValueError),
                          (lambda: q.get_many(-1), ValueError),
                          (lambda: q.get_many(True), TypeError),
                          (lambda: q.get_many(1.0), TypeError),
                          (lambda: q.get_many(2, block=False), Empty),
                          (lambda: q.get_many(None, block=False), Empty),
                          (lambda: q.get_many(2, timeout=0.05), Empty)):
            with pytest.raises(error):
                fn()
        q.put_many(iter([1, 2]))
        assert q.get_many(5, timeout=0.05) == [1, 2]
        q.put_many([1, 2])
        with pytest.raises(Full):
            q.put_many([3, 4], block=False)  # all or none
        assert q.get_many(5, block=False) == [1, 2]
        q.put_many([1, 2, 3, 4], block=False)  # larger than maxsize: fits an empty queue
        assert q.full() and q.qsize() == 4
        with pytest.raises(Full):
            q.put_many([5], timeout=0.05)
        assert q.get_many() == [1, 2, 3, 4]
    finally:
        q.close()


def test_queue_shut_down_is_the_exception_of_the_stdlib() -> None:
    assert issubclass(Empty, queue.Empty) and issubclass(Empty, asyncio.QueueEmpty)
    assert issubclass(Full, queue.Full) and issubclass(Full, asyncio.QueueFull)
    for std in (getattr(queue, "ShutDown", None), getattr(asyncio, "QueueShutDown", None)):
        if std is not None:
            assert issubclass(QueueShutDown, std)
