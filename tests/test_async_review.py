"""Queue (asyncio): shutdown racing puts, cancellation, counts and errors at their edges."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

import spoolq
from spoolq import Queue

from .servers import ThreadedServer


def _records_in_file(path: Path) -> int:
    """Ready records in a SQLite queue file, read with a connection of its own."""
    con = sqlite3.connect(path)
    try:
        count: int = con.execute("SELECT count(*) FROM spoolq_records").fetchone()[0]
        return count
    finally:
        con.close()


async def test_no_put_is_written_after_shutdown_returns(tmp_path: Path) -> None:
    # A put handed to the group commit just before shutdown() was written by the worker
    # after shutdown() had returned: the file gained items behind the shutdown's back.
    producers = 60
    for round_ in range(12):
        path = tmp_path / f"q{round_}.sqlite"
        async with await Queue.create(path) as q:

            async def produce(i: int) -> None:
                for _ in range(i % 5):
                    await asyncio.sleep(0)
                await q.put(i)

            tasks = [asyncio.create_task(produce(i)) for i in range(producers)]
            for _ in range(round_ % 4 + 1):
                await asyncio.sleep(0)
            q.shutdown()
            at_shutdown = _records_in_file(path)
            results = await asyncio.wait_for(
                asyncio.gather(*tasks, return_exceptions=True), 10)
            stored = [i for i, r in enumerate(results) if r is None]
            refused = [r for r in results if isinstance(r, spoolq.QueueShutDown)]
            assert len(stored) + len(refused) == producers, results
            assert _records_in_file(path) == at_shutdown == len(stored) == q.qsize()
            assert sorted(await q.get_many(None)) == stored


@pytest.mark.parametrize("name", [":memory:", "q.sqlite"])
async def test_a_put_waiting_for_room_raises_when_the_queue_is_closed(tmp_path: Path,
                                                                     name: str) -> None:
    # Woken by aclose(), a put that had waited past the poll interval re-read the counts
    # on the worker thread, which aclose() had stopped already: the put waited forever.
    path = name if name == ":memory:" else str(tmp_path / name)
    q = await Queue.create(path, maxsize=1, poll_interval=0.01)
    await q.put("a")
    putting = asyncio.create_task(q.put("b"))
    await asyncio.sleep(0.05)  # several poll intervals: a re-read of the counts is due
    await q.aclose()
    with pytest.raises(spoolq.QueueShutDown):
        await asyncio.wait_for(putting, 2)


async def test_shutdown_ends_a_long_poll_that_had_not_started_yet() -> None:
    # shutdown() asked the engine to end the long-polls in progress, but a get's
    # long-poll handed to its thread and not started yet began after that, and the get
    # raised only when it ended (5 s later).
    with ThreadedServer(":memory:") as server:
        async with await Queue.create(f"{server.url}/jobs", poll_interval=5) as q:
            with pytest.raises(spoolq.Empty):  # leaves an idle thread for the next poll
                await q.get_many(1, timeout=0.05)
            loop = asyncio.get_running_loop()
            getting = asyncio.create_task(q.get())
            # Runs right after the get's first step, which hands its long-poll to a thread.
            loop.call_soon(q.shutdown, True)
            with pytest.raises(spoolq.QueueShutDown):
                await asyncio.wait_for(getting, 1)
