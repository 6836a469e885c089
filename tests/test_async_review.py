"""Queue (asyncio): cancellation, wake-ups, event loops and counts at their edges."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import spoolq
from spoolq import Queue, SyncQueue


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
