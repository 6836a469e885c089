"""``Queue.create(..., calls_on_loop=True)``: with an engine whose calls are brief (SQLite
with durability "commit"), puts, gets and leases are made on the event loop while nothing
else of the queue is under way, and go to the worker thread when another process holds
the file's lock. The tests hold the queue's worker thread busy, so that a call which
needed it could not finish."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import Queue
from spoolq.zdict import DICTIONARY_QUEUE

from .sqlite_locks import hold_lock
from .threadstate import WorkerHeld

pytestmark = pytest.mark.asyncio


async def test_puts_gets_and_leases_need_no_worker(tmp_path: Path) -> None:
    async with await Queue.create(str(tmp_path / "q.sqlite"), calls_on_loop=True) as q:
        async with WorkerHeld(q):
            await asyncio.wait_for(q.put("a"), 5)
            await asyncio.wait_for(q.put_many(["b", "c", "d"]), 5)
            assert await asyncio.wait_for(q.get(), 5) == "a"
            assert await asyncio.wait_for(q.get_many(2), 5) == ["b", "c"]
            msg = await asyncio.wait_for(q.lease(ttl=30), 5)
            assert msg.item == "d"
            assert q.qsize() == 0
        await q.ack(msg)
    with spoolq.SyncQueue.create(str(tmp_path / "q.sqlite")) as again:
        assert again.qsize() == 0 and again.stats["leased"] == 0


async def test_by_default_every_call_goes_to_the_worker(tmp_path: Path) -> None:
    async with await Queue.create(str(tmp_path / "q.sqlite")) as q, WorkerHeld(q):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(q.put("a"), 0.3)


@pytest.mark.parametrize(("suffix", "durability"), [("lmdb", "commit"), ("sqlite", "fsync")])
async def test_engines_whose_calls_sync_the_disk_ignore_it(tmp_path: Path, suffix: str,
                                                          durability: str) -> None:
    async with await Queue.create(str(tmp_path / f"q.{suffix}"), durability=durability,
                                  calls_on_loop=True) as q, WorkerHeld(q):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(q.put("a"), 0.3)


async def test_puts_of_many_tasks_are_written_together_on_the_loop(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")

    async def produce(q: Queue[Any], k: int) -> None:
        for i in range(30):
            await q.put([k, i])

    async with await Queue.create(path, calls_on_loop=True) as q, WorkerHeld(q):
        await asyncio.wait_for(asyncio.gather(*(produce(q, k) for k in range(20))), 20)
        assert q.qsize() == 600
        got = [x for _ in range(3) for x in await asyncio.wait_for(q.get_many(200), 5)]
    assert sorted(got) == [[k, i] for k in range(20) for i in range(30)]
    for k in range(20):
        assert [i for kk, i in got if kk == k] == list(range(30))  # each task's in order


@pytest.mark.parametrize("cancelled", [0, 1])
async def test_a_put_cancelled_while_its_batch_gathers(tmp_path: Path, cancelled: int) -> None:
    """Cancelled while its batch gathers (every put of it yields once first), a put raises
    CancelledError and its item is stored at most once, in its place; the others of the
    batch are stored, whichever put was to write the batch."""
    async with await Queue.create(str(tmp_path / "q.sqlite"), calls_on_loop=True) as q:
        tasks = [asyncio.create_task(q.put(i)) for i in range(3)]
        await asyncio.sleep(0)  # each put has joined the batch and yields once
        tasks[cancelled].cancel()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        assert isinstance(results[cancelled], asyncio.CancelledError)
        assert [r for k, r in enumerate(results) if k != cancelled] == [None, None]
        got = await q.get_many(None, timeout=1)
        assert got in ([0, 1, 2], [k for k in range(3) if k != cancelled])
        assert q.qsize() == 0


async def _ticking(stop: asyncio.Event) -> float:
    """The longest the loop went without running this task, until ``stop``."""
    longest, last = 0.0, time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(0.005)
        now = time.monotonic()
        longest, last = max(longest, now - last), now
    return longest


@pytest.mark.parametrize("call", ["put", "get"])
async def test_a_call_that_would_wait_for_another_process_goes_to_the_worker(
        tmp_path: Path, call: str) -> None:
    path = str(tmp_path / "q.sqlite")
    held = 1.0
    async with await Queue.create(path, calls_on_loop=True) as q:
        await q.put("first")
        with await asyncio.to_thread(hold_lock, path, held):
            stop = asyncio.Event()
            ticker = asyncio.create_task(_ticking(stop))
            await asyncio.sleep(0.02)
            start = time.monotonic()
            if call == "put":
                await asyncio.wait_for(q.put("second"), 20)
            else:
                assert await asyncio.wait_for(q.get(), 20) == "first"
            waited = time.monotonic() - start
            stop.set()
            longest = await ticker
        assert waited > held / 2  # it did wait for the other process's lock
        assert longest < held / 2, f"the loop was held for {longest:.3f} s"
        assert q.qsize() == (2 if call == "put" else 0)


async def test_it_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(spoolq.ConfigurationError, match="calls_on_loop"):
        await Queue.create(str(tmp_path / "q.sqlite"), calls_on_loop="yes")  # type: ignore[arg-type]
    assert not (tmp_path / "q.sqlite").exists()


async def test_durability_buffer_ignores_it(tmp_path: Path) -> None:
    async with await Queue.create(str(tmp_path / "q.sqlite"), durability="buffer",
                                  calls_on_loop=True) as q:
        await q.put("a")
        await q.flush()
        async with WorkerHeld(q):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(q.get(), 0.3)


async def test_batches_beyond_256_items_go_to_the_worker(tmp_path: Path) -> None:
    async with await Queue.create(str(tmp_path / "q.sqlite"), calls_on_loop=True) as q:
        async with WorkerHeld(q):
            await asyncio.wait_for(q.put_many(list(range(256))), 5)  # on the loop
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(q.put_many(list(range(257))), 0.3)
        await q.put_many(list(range(44)))
        assert q.qsize() == 300
        async with WorkerHeld(q):
            assert await asyncio.wait_for(q.get_many(256), 5) == list(range(256))
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(q.get_many(257), 0.3)


async def test_a_take_on_the_loop_comes_after_items_a_cancelled_get_gives_back(
        tmp_path: Path) -> None:
    """A get_many holding 1, 2, 3 is cancelled while a get waits for the worker: their
    give-back waits behind another job of the worker, and the get, whose take could run
    on the loop, must not be handed 4 before them."""
    path = str(tmp_path / "q.sqlite")
    async with await Queue.create(path, calls_on_loop=True, poll_interval=0.2) as q:
        await q.put_many([1, 2, 3])
        holding = asyncio.create_task(q.get_many(5))  # takes 1, 2, 3, then waits for more
        await asyncio.sleep(0.05)
        async with WorkerHeld(q):
            await asyncio.sleep(0.25)  # a look at the counts is due
            getter = asyncio.create_task(q.get())  # its look waits for the worker
            await asyncio.sleep(0.05)
            await asyncio.to_thread(_put_elsewhere, path, [4, 5])
            second = WorkerHeld(q)  # the next job of the worker after that look
            holding.cancel()  # 1, 2, 3 go back through the worker, after that job
            with pytest.raises(asyncio.CancelledError):
                await holding
        async with second:
            await asyncio.sleep(0.1)  # the get has looked, and may take
        first = await asyncio.wait_for(getter, 5)
        rest = await asyncio.wait_for(q.get_many(None, timeout=2), 5)
        assert [first, *rest] == [1, 2, 3, 4, 5]


def _put_elsewhere(path: str, items: list[Any]) -> None:
    subprocess.run([sys.executable, "-c", "import spoolq, sys\n"
                    "with spoolq.SyncQueue.create(sys.argv[1]) as q:\n"
                    "    q.put_many([int(x) for x in sys.argv[2:]])",
                    path, *map(str, items)], check=True)


async def test_a_damaged_record_taken_on_the_loop_is_set_aside_by_the_worker(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(["a", "b"])
    with sqlite3.connect(path) as conn:  # the record of "a": its bytes no longer match
        conn.execute("UPDATE spoolq_records SET data = x'00ff00ff00ff00ff00ff' "
                     "WHERE id = (SELECT min(id) FROM spoolq_records)")
    async with await Queue.create(path, calls_on_loop=True) as q:
        async with WorkerHeld(q):
            assert await asyncio.wait_for(q.get(), 5) == "b"
            assert q.stats["dead"] == 0  # not set aside on the loop
        for _ in range(200):
            if q.stats["dead"] == 1:
                break
            await asyncio.sleep(0.01)
        assert q.stats["dead"] == 1
        assert q.qsize() == 0


async def test_a_take_while_puts_gather_writes_them_on_the_loop(tmp_path: Path) -> None:
    """Puts of other tasks wait for their group commit as a get takes: the take writes
    them first, on the loop, as a take on the worker does."""
    async with await Queue.create(str(tmp_path / "q.sqlite"), calls_on_loop=True) as q:
        await q.put(1)
        async with WorkerHeld(q):
            got = await asyncio.wait_for(asyncio.gather(q.put(2), q.put(3), q.get()), 5)
            assert got == [None, None, 1]
            assert await asyncio.wait_for(q.get_many(2), 5) == [2, 3]


async def test_a_zstd_dictionary_is_trained_on_the_worker(tmp_path: Path) -> None:
    """Training a dictionary takes tens of milliseconds: a put made on the loop that
    finds the samples enough hands the training to the worker thread."""
    rnd = random.Random(1)
    words = ["alpha", "beta", "gamma", "delta", "order", "user", "item", "price", "qty"]
    docs = [json.dumps({"n": i, "rows": [{"k": rnd.choice(words), "v": rnd.randint(0, 10**6)}
                                         for _ in range(500)]}).encode() for i in range(101)]
    async with await Queue.create(str(tmp_path / "q.sqlite"), serializer="raw",
                                  compressor="zstd-dict", calls_on_loop=True) as q:
        engine = q._core.engine
        async with WorkerHeld(q):
            for doc in docs[:100]:
                await asyncio.wait_for(q.put(doc), 5)  # on the loop, the worker held
            assert not engine.peek(DICTIONARY_QUEUE, 1)  # not trained on the loop
        for _ in range(500):
            if engine.peek(DICTIONARY_QUEUE, 1):
                break
            await asyncio.sleep(0.01)
        assert engine.peek(DICTIONARY_QUEUE, 1), "the worker never stored the dictionary"
        await q.put(docs[100])
        tail = engine.peek("default", 1, offset=q.qsize() - 1)[0].data
        assert spoolq.codec.record_dictionary(tail) == 1
        assert await q.get_many(101) == docs
