"""An async get with ``calls_on_loop`` that finds an item ready yields once to the tasks
ready to run, whose puts then join its take's transaction. What those tasks do meanwhile
(close the queue, shut it down) must leave the get as a get under way: it takes its
item or raises as the other gets under way do, never as a call made on a closed queue."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from spoolq import Queue, QueueShutDown
from spoolq.engines.sqlite import SQLiteEngine

pytestmark = pytest.mark.asyncio


def _left(path: Path) -> int:
    engine = SQLiteEngine(path)
    try:
        return engine.counts("default").ready
    finally:
        engine.close()


@pytest.mark.parametrize("calls_on_loop", [False, True])
async def test_a_get_under_way_when_the_queue_is_closed_never_raises_closed_error(
        tmp_path: Path, calls_on_loop: bool) -> None:
    """A get called with an item ready, then aclose() from a task ready to run: the get
    returns the item or raises QueueShutDown (as gets waiting do), not ClosedError, which
    says the queue was closed before the call; and the item is not lost either way."""
    path = tmp_path / "q.sqlite"
    q = await Queue.create(str(path), calls_on_loop=calls_on_loop)
    await q.put(1)
    get = asyncio.create_task(q.get())
    close = asyncio.create_task(q.aclose())
    got, closed = await asyncio.wait_for(asyncio.gather(get, close, return_exceptions=True),
                                         10)
    assert closed is None
    assert got == 1 or isinstance(got, QueueShutDown), repr(got)
    assert _left(path) == (0 if got == 1 else 1)


async def test_a_get_called_on_a_closed_queue_raises_closed_error(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    q = await Queue.create(str(path), calls_on_loop=True)
    await q.put(1)
    await q.aclose()
    with pytest.raises(Exception) as raised:
        await asyncio.wait_for(q.get(), 5)
    assert type(raised.value).__name__ == "ClosedError"
    assert _left(path) == 1
