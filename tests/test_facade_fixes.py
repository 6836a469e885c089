"""SyncQueue and Queue at the edges of shutdown and close: empty batches, puts racing a
shutdown, leased blocks whose queue closes, put_nowait after another handle made room,
and records a waiting get_many holds when close() stops waiting for it."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import Queue, SyncQueue
from spoolq.engines import Engine, WaitCancel, open_engine

from .waiting import in_thread


@pytest.fixture(params=[":memory:", "queue.sqlite"])
def either_path(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The memory engine (called on the event loop) and a SQLite file (on the worker)."""
    name = str(request.param)
    return name if name == ":memory:" else str(tmp_path / name)


class _Gated:
    """Delegates to a real engine. While ``hold_append`` is set, ``append`` sets
    ``entered`` and waits for ``go`` before it writes; ``stored`` counts the records
    written. ``wait_ready`` (a long-poll that ignores cancellation) returns False once
    ``go`` is set, so a get can be kept waiting past close()'s patience."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.hold_append = False
        self.entered = threading.Event()
        self.waiting = threading.Event()
        self.go = threading.Event()
        self.stored = 0
        self.calls: list[str] = []  # restore and close, in order

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        if self.hold_append:
            self.entered.set()
            assert self.go.wait(5), "append was held for too long"
        ids = self._inner.append(queue, records, raw_sizes, now)
        self.stored += len(records)
        return ids

    def wait_ready(self, queue: str, timeout: float, cancel: WaitCancel | None = None) -> bool:
        self.waiting.set()
        assert self.go.wait(5), "wait_ready was held for too long"
        return False

    def restore(self, queue: str, records: Sequence[Any]) -> None:
        self.calls.append("restore")
        self._inner.restore(queue, records)

    def close(self) -> None:
        self.calls.append("close")
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# ---- put_many([]) after shutdown ---------------------------------------------------------

@pytest.mark.parametrize("maxsize", [0, 3])
def test_sync_put_many_of_nothing_after_shutdown_raises(either_path: str, maxsize: int) -> None:
    # An empty batch returned before the shutdown check: put raised, put_many([]) did not.
    with SyncQueue.create(either_path, maxsize=maxsize) as q:
        q.put_many([])
        q.shutdown()
        with pytest.raises(spoolq.QueueShutDown):
            q.put_many([])
        with pytest.raises(spoolq.QueueShutDown):
            q.put_many([], block=False)


@pytest.mark.parametrize("maxsize", [0, 3])
async def test_async_put_many_of_nothing_after_shutdown_raises(either_path: str,
                                                               maxsize: int) -> None:
    async with await Queue.create(either_path, maxsize=maxsize) as q:
        await q.put_many([])
        q.shutdown()
        with pytest.raises(spoolq.QueueShutDown):
            await q.put_many([])
        with pytest.raises(spoolq.QueueShutDown):
            await q.put_many([], timeout=0)


# ---- leased() when the queue closes inside the block ------------------------------------

class _Boom(Exception):
    pass


def test_sync_leased_keeps_the_callers_exception_when_the_queue_closes(
        either_path: str, caplog: pytest.LogCaptureFixture) -> None:
    # The nack after the block raised ClosedError, which replaced the caller's exception.
    q: SyncQueue[str] = SyncQueue.create(either_path)
    q.put("job")
    with caplog.at_level(logging.WARNING, "spoolq"), pytest.raises(_Boom), \
            q.leased(timeout=5) as item:
        assert item == "job"
        q.close()
        raise _Boom
    assert "could not be nacked" in caplog.text


async def test_async_leased_keeps_the_callers_exception_when_the_queue_closes(
        either_path: str, caplog: pytest.LogCaptureFixture) -> None:
    q: Queue[str] = await Queue.create(either_path)
    await q.put("job")
    with caplog.at_level(logging.WARNING, "spoolq"), pytest.raises(_Boom):
        async with q.leased(timeout=5) as item:
            assert item == "job"
            await q.aclose()
            raise _Boom
    assert "could not be nacked" in caplog.text


def test_sync_leased_still_nacks_on_error_and_acks_on_success(either_path: str) -> None:
    with SyncQueue.create(either_path) as q:
        q.put("job")
        with pytest.raises(_Boom), q.leased(timeout=5):
            raise _Boom
        with q.leased(timeout=5) as item:
            assert item == "job"
        assert q.qsize() == 0 and q.stats["leased"] == 0 and q.stats["nacks"] == 1



# ---- put_nowait after another handle made room ------------------------------------------

def test_sync_put_nowait_rereads_the_counts_before_refusing(tmp_path: Path) -> None:
    # put_nowait refused from the count this handle last read, long after another handle
    # had emptied the queue (get_nowait re-reads before it raises Empty).
    path = str(tmp_path / "q.sqlite")
    with SyncQueue.create(path, maxsize=2, poll_interval=60) as q, \
            SyncQueue.create(path, poll_interval=60) as other:
        q.put_many([1, 2])
        assert q.full()
        assert other.get_many(2, block=False) == [1, 2]
        q.put_nowait(3)
        assert other.get_many(None, block=False) == [3]
        q.put_many([4, 5], timeout=0)  # past its deadline at once: looks again first
        with pytest.raises(spoolq.Full):
            q.put_nowait(6)  # really full now
        assert other.get_many(None, block=False) == [4, 5]


async def test_async_put_nowait_rereads_the_counts_before_refusing(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    async with await Queue.create(path, maxsize=2, poll_interval=60) as q:
        with SyncQueue.create(path, poll_interval=60) as other:
            await q.put_many([1, 2])
            assert q.full()
            assert other.get_many(2, block=False) == [1, 2]
            q.put_nowait(3)
            assert other.get_many(None, block=False) == [3]
            await q.put_many([4, 5], timeout=0)  # past its deadline at once: looks again
            with pytest.raises(spoolq.Full):
                q.put_nowait(6)
            assert other.get_many(None, block=False) == [4, 5]


# ---- a put racing shutdown() -------------------------------------------------------------

@pytest.mark.parametrize("maxsize", [0, 5])
def test_sync_shutdown_returns_after_a_put_in_progress_is_stored(either_path: str,
                                                                 maxsize: int) -> None:
    # A put past the façade's shutdown check wrote its item after shutdown() returned
    # (queue.Queue's lock rules that out): a consumer could drain, see QueueShutDown and
    # leave, and the item arrived later.
    engine = _Gated(open_engine(either_path))
    with SyncQueue.create(either_path, engine=engine, maxsize=maxsize) as q:
        engine.hold_append = True
        putter, out = in_thread(lambda: q.put("x"))
        assert engine.entered.wait(5)  # the put is writing
        release = threading.Timer(0.2, engine.go.set)
        release.start()
        q.shutdown()
        assert engine.stored == 1  # written before shutdown() returned
        putter.join(5)
        release.join()
        assert out == [None]
        assert q.get_nowait() == "x"
        with pytest.raises(spoolq.QueueShutDown):
            q.get_nowait()
        with pytest.raises(spoolq.QueueShutDown):
            q.put("late")


def test_sync_shutdown_writes_the_puts_waiting_for_a_group_commit(either_path: str) -> None:
    # A put that joined the next group commit while another was writing was written by
    # that put's thread after shutdown() had returned.
    engine = _Gated(open_engine(either_path))
    with SyncQueue.create(either_path, engine=engine) as q:
        engine.hold_append = True
        first, first_out = in_thread(lambda: q.put("a"))
        assert engine.entered.wait(5)  # holds the core's lock while it writes
        second, second_out = in_thread(lambda: q.put("b"))
        deadline = time.monotonic() + 5
        while not q._core.group.pending():  # "b" waits for the next commit
            assert time.monotonic() < deadline
            time.sleep(0.001)
        release = threading.Timer(0.2, engine.go.set)
        release.start()
        q.shutdown()
        assert engine.stored == 2
        first.join(5)
        second.join(5)
        release.join()
        assert first_out == second_out == [None]
        assert q.get_many(None, block=False) == ["a", "b"]


# ---- records a waiting get_many holds when close() stops waiting for it ------------------

def test_sync_close_gives_back_what_a_waiting_get_many_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # close() waited 10 s for blocked calls, then closed the file: a get_many holding the
    # items it took (waiting for the rest) then failed to give them back, and they were
    # lost. A long-poll deaf to close() stands for a call that cannot react in time.
    monkeypatch.setattr(spoolq.sync, "_CLOSE_WAIT", 0.1)
    path = str(tmp_path / "q.sqlite")
    engine = _Gated(open_engine(path))
    q: SyncQueue[str] = SyncQueue.create(path, engine=engine)
    q.put("a")
    getter, out = in_thread(lambda: q.get_many(2))
    assert engine.waiting.wait(5)  # took "a", waits for one more
    q.close()
    assert engine.calls == ["restore", "close"]
    engine.go.set()
    getter.join(5)
    assert len(out) == 1 and isinstance(out[0], spoolq.QueueShutDown)
    with SyncQueue.create(path) as again:
        assert again.get_many(None, block=False) == ["a"]


async def test_async_close_gives_back_what_a_waiting_get_many_holds(
        either_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spoolq._aioclose, "_CLOSE_WAIT", 0.1)
    engine = _Gated(open_engine(either_path))
    q: Queue[str] = await Queue.create(either_path, engine=engine)
    await q.put("a")
    getting = asyncio.create_task(q.get_many(2))
    assert await asyncio.to_thread(engine.waiting.wait, 5)  # took "a", waits for more
    await q.aclose()
    assert engine.calls == ["restore", "close"]
    engine.go.set()
    with pytest.raises(spoolq.QueueShutDown):
        await asyncio.wait_for(getting, 5)
    if either_path != ":memory:":
        async with await Queue.create(either_path) as again:
            assert await again.get_many(None, timeout=0) == ["a"]


@pytest.mark.parametrize("sync", [True, False])
async def test_a_get_many_that_waited_hands_out_its_items_and_keeps_no_holding(
        either_path: str, sync: bool) -> None:
    items: list[int]
    if sync:
        with SyncQueue.create(either_path, poll_interval=0.01) as sq:
            sq.put(1)
            getter, out = in_thread(lambda: sq.get_many(3, timeout=5))
            time.sleep(0.05)
            sq.put_many([2, 3])
            getter.join(5)
            items = out[0]
            assert not sq._core._holdings
    else:
        async with await Queue.create(either_path, poll_interval=0.01) as aq:
            await aq.put(1)
            getting = asyncio.create_task(aq.get_many(3, timeout=5))
            await asyncio.sleep(0.05)
            await aq.put_many([2, 3])
            items = await getting
            assert not aq._core._holdings
    assert items == [1, 2, 3]
