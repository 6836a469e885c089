"""Queue (asyncio): cancellation, wake-ups, event loops and counts at their edges."""

from __future__ import annotations

import asyncio

import pytest

from spoolq import Queue


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
