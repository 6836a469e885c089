"""Queue (asyncio) against what a user of asyncio.Queue expects: a call cancelled while the
worker holds what it took, a loop that stops with such a call under way, and a shut-down
queue drained while another get is receiving its last item."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import Queue, SyncQueue
from spoolq.engines import Engine, Lease, StoredRecord, open_engine

from .conftest import queue_path

ENGINES = ["sqlite", "lmdb"]
"""Engines called on the worker thread (the memory engine is called on the loop: nothing
it takes is ever on its way between the two)."""


class _Held:
    """Delegates to a real engine. A take that removed records sets ``took``, then waits for
    ``take_gate`` while it is clear; while ``restore_gate`` is clear, a restore waits for
    it (``restoring`` is set meanwhile)."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.take_gate = threading.Event()
        self.take_gate.set()
        self.took = threading.Event()
        self.restore_gate = threading.Event()
        self.restore_gate.set()
        self.restoring = threading.Event()

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        recs = self._inner.take(queue, n, now, lease)
        if recs:
            self.took.set()
            self.take_gate.wait(5)
        return recs

    def restore(self, queue: str, records: Sequence[StoredRecord]) -> None:
        if not self.restore_gate.is_set():
            self.restoring.set()
            self.restore_gate.wait(5)
        self._inner.restore(queue, records)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _left_in(path: str) -> list[Any]:
    with SyncQueue.create(path) as again:
        return again.get_many(None, block=False) if again.qsize() else []


def _get_nowait_within(q: Queue[Any], seconds: float) -> Any:
    """get_nowait from a thread without a loop, trying again while it raises Empty."""
    until = time.monotonic() + seconds
    while True:
        try:
            return q.get_nowait()
        except spoolq.Empty:
            if time.monotonic() > until:
                raise
            time.sleep(0.005)


@contextlib.contextmanager
def _on_own_loop(tmp_path: Path, engine_name: str,
                 items: list[Any]) -> Iterator[tuple[_Held, asyncio.AbstractEventLoop, Queue[Any]]]:
    """A queue holding ``items`` on a held engine, created on a loop of its own that the
    test runs and stops; the loop is closed at the end."""
    path = queue_path(tmp_path, engine_name)
    engine = _Held(open_engine(path))
    loop = asyncio.new_event_loop()
    try:
        q: Queue[Any] = loop.run_until_complete(Queue.create(path, engine=engine))
        loop.run_until_complete(q.put_many(items))
        yield engine, loop, q
    finally:
        loop.close()


# ---- a loop that stops while a cancelled call's records are on the worker ----------------


@pytest.mark.parametrize("engine_name", ENGINES)
def test_a_get_cancelled_while_its_take_runs_keeps_the_item_when_its_loop_stops(
        tmp_path: Path, engine_name: str) -> None:
    # The records of a take whose get was cancelled went back only once the take's result
    # reached the loop: a loop that had stopped (closed from another loop, as documented)
    # never received it, and the item was gone from the file.
    path = queue_path(tmp_path, engine_name)
    with _on_own_loop(tmp_path, engine_name, ["x"]) as (engine, loop, q):
        engine.take_gate.clear()

        async def get_and_cancel() -> None:
            getting = asyncio.create_task(q.get())
            while not engine.took.is_set():  # the worker removed the record
                await asyncio.sleep(0.001)
            getting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getting

        loop.run_until_complete(get_and_cancel())
        engine.take_gate.set()  # the take returns with the loop stopped
        assert _get_nowait_within(q, 5) == "x"  # back in the queue, for this handle too
        q.put_nowait("y")
        asyncio.run(q.aclose())
    assert _left_in(path) == ["y"]


@pytest.mark.parametrize("engine_name", ENGINES)
def test_a_get_many_cancelled_as_its_loop_stops_leaves_its_items_to_get_nowait(
        tmp_path: Path, engine_name: str) -> None:
    # The items went back to the file, but the handle counted the give-back under way
    # until its result reached the loop, which had stopped: get_nowait raised Empty for
    # ever, with qsize() 2.
    path = queue_path(tmp_path, engine_name)
    with _on_own_loop(tmp_path, engine_name, [1, 2]) as (engine, loop, q):
        engine.restore_gate.clear()

        async def get_many_and_cancel() -> None:
            getting = asyncio.create_task(q.get_many(3))
            while q.qsize():  # it holds both and waits for a third
                await asyncio.sleep(0.001)
            getting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getting

        loop.run_until_complete(get_many_and_cancel())
        assert engine.restoring.wait(5)
        assert q.qsize() == 2  # on their way back, counted all along
        engine.restore_gate.set()  # the give-back ends with the loop stopped
        assert [_get_nowait_within(q, 5), _get_nowait_within(q, 5)] == [1, 2]
        asyncio.run(q.aclose())
    assert _left_in(path) == []


@pytest.mark.parametrize("engine_name", ENGINES)
def test_a_get_whose_loop_stops_before_it_resumes_gives_its_item_back_at_close(
        tmp_path: Path, engine_name: str) -> None:
    # The take's result waited in the stopped loop for a get that never resumed: closing
    # the queue from another loop closed the file without the item.
    path = queue_path(tmp_path, engine_name)
    with _on_own_loop(tmp_path, engine_name, ["x"]) as (engine, loop, q):
        engine.take_gate.clear()

        async def start_get() -> asyncio.Task[Any]:
            getting = asyncio.create_task(q.get())
            while not engine.took.is_set():
                await asyncio.sleep(0.001)
            return getting

        getting = loop.run_until_complete(start_get())
        engine.take_gate.set()  # the take returns with the loop stopped, the get waiting
        asyncio.run(q.aclose())
        # Resumed after all, the get hands out nothing: the close gave its item back.
        with pytest.raises(spoolq.QueueShutDown):
            loop.run_until_complete(getting)
    assert _left_in(path) == ["x"]


# ---- shutdown: drained means nothing is on its way to a get either ----------------------


def _hold_loop_until(q: Queue[Any], done: threading.Event) -> None:
    """Block the event loop until the worker thread has done something and finished the
    call that did it: its result then waits for the loop, as it does whenever the loop is
    busy."""
    assert done.wait(5)
    finished = threading.Event()
    q._worker.post(finished.set)  # runs once the call before it returned (in order)
    assert finished.wait(5)


@contextlib.asynccontextmanager
async def _shut_down_as_a_get_receives(
        tmp_path: Path, engine_name: str) -> AsyncIterator[tuple[Queue[Any], asyncio.Task[Any]]]:
    """A queue (poll interval 30 s) whose one item a first get has taken on the worker
    and not yet received when the queue is shut down; yields the queue and that get."""
    path = queue_path(tmp_path, engine_name)
    engine = _Held(open_engine(path))
    async with await Queue.create(path, engine=engine, poll_interval=30) as q:
        await q.put("x")
        first = asyncio.create_task(q.get())
        await asyncio.sleep(0)  # its take is sent to the worker
        _hold_loop_until(q, engine.took)
        q.shutdown()
        yield q, first


@pytest.mark.parametrize("engine_name", ENGINES)
async def test_a_shut_down_queue_is_not_drained_while_a_get_receives_its_last_item(
        tmp_path: Path, engine_name: str) -> None:
    # A get that began while another was receiving the last item raised QueueShutDown at
    # once (qsize() was 1); the other was then cancelled and gave the item back, which no
    # consumer drained. get_nowait raised QueueShutDown too.
    async with _shut_down_as_a_get_receives(tmp_path, engine_name) as (q, first):
        assert q.qsize() == 1
        with pytest.raises(spoolq.Empty):  # not ready now, but not drained either
            q.get_nowait()
        second = asyncio.create_task(q.get())
        await asyncio.sleep(0)  # it starts; the first has its item, not yet resumed
        assert not second.done()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await asyncio.wait_for(second, 5) == "x"
        assert q.qsize() == 0
        with pytest.raises(spoolq.QueueShutDown):
            q.get_nowait()
        with pytest.raises(spoolq.QueueShutDown):
            await asyncio.wait_for(q.get(), 5)


@pytest.mark.parametrize("engine_name", ENGINES)
async def test_a_get_waiting_on_a_shut_down_queue_raises_once_the_last_item_is_received(
        tmp_path: Path, engine_name: str) -> None:
    async with _shut_down_as_a_get_receives(tmp_path, engine_name) as (q, first):
        second = asyncio.create_task(q.get())
        await asyncio.sleep(0)
        assert await asyncio.wait_for(first, 5) == "x"
        with pytest.raises(spoolq.QueueShutDown):
            await asyncio.wait_for(second, 10)  # not after the poll interval (30 s)


# ---- a nack's delay ----------------------------------------------------------------------


@pytest.mark.parametrize("engine_name", ["memory", *ENGINES])
async def test_a_waiting_get_returns_a_nacked_item_when_its_delay_ends(
        tmp_path: Path, engine_name: str) -> None:
    # The get looked again only after the poll interval (30 s here), however short the
    # delay this handle's own nack had set.
    async with await Queue.create(queue_path(tmp_path, engine_name), poll_interval=30) as q:
        await q.put("x")
        msg = await q.lease()
        await q.nack(msg, delay=1.0)
        started = time.monotonic()
        getting = asyncio.create_task(q.get())
        await asyncio.sleep(0.1)
        if time.monotonic() - started < 0.9:  # a loaded machine may sleep longer
            assert not getting.done()  # not before the delay ends
        assert await asyncio.wait_for(getting, 15) == "x"
        assert time.monotonic() - started < 15  # well before the poll interval (30 s)
