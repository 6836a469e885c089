"""Queue (asyncio): shutdown racing puts, cancellation, counts and errors at their edges."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import Queue
from spoolq.engines import Engine, open_engine

from .failing import FailingAppend
from .servers import ThreadedServer


def _records_in_file(path: Path) -> int:
    """Ready records in a SQLite queue file, read with a connection of its own."""
    con = sqlite3.connect(path)
    try:
        count: int = con.execute("SELECT count(*) FROM spoolq_records").fetchone()[0]
        return count
    finally:
        con.close()


@pytest.mark.parametrize("durability", ["commit", "fsync"])
async def test_no_put_is_written_after_shutdown_returns(tmp_path: Path, durability: str) -> None:
    # A put handed to the group commit just before shutdown() was written by the worker
    # after shutdown() had returned: the file gained items behind the shutdown's back.
    producers = 60
    for round_ in range(12):
        path = tmp_path / f"q{round_}.sqlite"
        async with await Queue.create(path, durability=durability) as q:

            async def produce(i: int) -> None:
                for _ in range(i % 5):
                    await asyncio.sleep(0)
                if i % 7:
                    await q.put(i)
                else:
                    await q.put_many([i])

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


async def test_a_buffered_put_whose_flush_fails_waits_for_the_next_one(tmp_path: Path) -> None:
    # The put that made a flush due raised the flush's error, yet its item stayed in the
    # buffer and the next flush stored it: a caller retrying it stored it twice.
    path = str(tmp_path / "q.sqlite")
    engine = FailingAppend(open_engine(path))
    async with await Queue.create(path, engine=engine, durability="buffer", flush_items=2,
                                  flush_interval=60) as q:
        await q.put("a")  # buffered
        engine.failures = 1
        putting = asyncio.create_task(q.put("b"))  # makes the flush due, which fails
        await asyncio.sleep(0.05)
        assert not putting.done()  # waits for its item to be written
        await q.flush()
        await asyncio.wait_for(putting, 2)
        assert await q.get_many(None) == ["a", "b"]


async def test_flush_raises_each_time_the_buffer_cannot_be_written(tmp_path: Path) -> None:
    # After one failed flush the buffered records went back without their puts, and a
    # flush that failed to write them again returned as if it had.
    path = str(tmp_path / "q.sqlite")
    engine = FailingAppend(open_engine(path))
    async with await Queue.create(path, engine=engine, durability="buffer",
                                  flush_interval=60) as q:
        await q.put_many(["a", "b"])
        engine.failures = 2
        for _ in range(2):
            with pytest.raises(spoolq.EngineError, match="no space"):
                await q.flush()
        await q.flush()
        assert _records_in_file(Path(path)) == 2
        assert await q.get_many(None) == ["a", "b"]


@pytest.mark.parametrize("name", [":memory:", "q.sqlite"])
async def test_requeue_dead_refuses_ids_that_are_not_ints(tmp_path: Path, name: str) -> None:
    # The memory engine moved nothing and returned 0; SQLite raised a TypeError about
    # comparing an int with a str.
    path = name if name == ":memory:" else str(tmp_path / name)
    async with await Queue.create(path, max_attempts=1) as q:
        await q.put("a")
        await q.nack(await q.lease())
        assert q.stats["dead"] == 1
        for ids in (["x"], [1.0], [None], [True]):
            with pytest.raises(TypeError, match="ids must be an int"):
                await q.requeue_dead(ids)  # type: ignore[list-item]
        with pytest.raises(ValueError, match="ids must be >= 0"):
            await q.requeue_dead([-1])
        assert q.stats["dead"] == 1 and await q.peek(dead=True) == ["a"]
        assert await q.requeue_dead() == 1 and await q.get() == "a"


async def test_a_put_the_engine_refuses_fails_alone_not_the_puts_written_with_it() -> None:
    # Concurrent puts are written in one transaction: one record too large for the
    # server failed every put of that transaction, and their items were not stored.
    with ThreadedServer(":memory:", max_frame=1 << 20) as server:
        async with await Queue.create(f"{server.url}/jobs", serializer="raw",
                                      compressor="none") as q:
            small = [b"%d" % i for i in range(9)]
            results = await asyncio.gather(*(q.put(item) for item in small[:4]),
                                           q.put(bytes(2 << 20)),
                                           *(q.put(item) for item in small[4:]),
                                           return_exceptions=True)
            assert [type(r).__name__ for r in results] == (
                ["NoneType"] * 4 + ["FrameTooLarge"] + ["NoneType"] * 5)
            assert q.qsize() == 9 and q.stats["unfinished"] == 9
            assert sorted(await q.get_many(9)) == sorted(small)


class _HeldAppend:
    """Delegates to a real engine, counting appends; while ``go`` is clear an append
    waits for it, and an append begun while ``failing`` is set raises EngineError."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.appends = 0
        self.failing = False
        self.go = threading.Event()
        self.go.set()
        self.waiting = threading.Event()

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        self.appends += 1
        failing = self.failing
        if not self.go.is_set():
            self.waiting.set()
            self.go.wait(5)
        if failing:
            raise spoolq.EngineError("disk I/O error")
        return self._inner.append(queue, records, raw_sizes, now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_group_commit_failing_for_every_caller_is_tried_three_times(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    engine = _HeldAppend(open_engine(path))
    async with await Queue.create(path, engine=engine) as q:
        engine.go.clear()
        first = asyncio.create_task(q.put("first"))
        while not engine.waiting.is_set():
            await asyncio.sleep(0.001)
        engine.failing = True
        others = asyncio.gather(*(q.put(i) for i in range(8)), return_exceptions=True)
        while q.qsize() < 9:  # all eight wait for the next group commit
            await asyncio.sleep(0)
        engine.go.set()
        await first
        results = await asyncio.wait_for(others, 5)
        assert all(isinstance(r, spoolq.EngineError) for r in results)
        assert engine.appends == 4  # "first", the batch of eight, and its two halves
        assert q.qsize() == 1 and q.stats["unfinished"] == 1
        assert await q.get_many(None) == ["first"]


@pytest.mark.parametrize("name", [":memory:", "q.sqlite"])
async def test_a_purge_wakes_a_put_waiting_for_room(tmp_path: Path, name: str) -> None:
    # Only a get woke the puts waiting for room: after a purge they waited for their
    # next poll (poll_interval seconds) to find it.
    path = name if name == ":memory:" else str(tmp_path / name)
    async with await Queue.create(path, maxsize=1, poll_interval=5) as q:
        await q.put("a")
        putting = asyncio.create_task(q.put("b"))
        await asyncio.sleep(0.01)
        assert await q.purge() == 1
        await asyncio.wait_for(putting, 1)
        assert await q.get_many(None) == ["b"]


@pytest.mark.parametrize("name", [":memory:", "q.sqlite"])
async def test_an_ack_that_raises_for_one_lease_still_wakes_join(tmp_path: Path,
                                                                 name: str) -> None:
    # The ack settled the lease it held, then raised LeaseError for the stale one without
    # waking join(), which saw the finished count at its next poll (poll_interval later).
    path = name if name == ":memory:" else str(tmp_path / name)
    async with await Queue.create(path, poll_interval=5) as q:
        await q.put_many(["a", "b"])
        done = await q.lease()
        await q.ack(done)
        held = await q.lease()
        joining = asyncio.create_task(q.join())
        await asyncio.sleep(0.01)
        with pytest.raises(spoolq.LeaseError):
            await q.ack(held, done)
        await asyncio.wait_for(joining, 1)
        assert q.stats["leased"] == 0 and q.stats["unfinished"] == 0
