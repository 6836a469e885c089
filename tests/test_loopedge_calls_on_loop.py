"""``calls_on_loop``: work that may hold the event loop long, met by a call already made
on the loop, goes to the worker thread: a reap of expired leases that falls due after the
take looked, the writing apart of a batch the engine refused, and the loading of a zstd
dictionary another handle trained. The tests hold the queue's worker thread busy, so
that such work cannot be done meanwhile; the loop must not do it instead."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import Queue, SpoolqError

from .sqlite_locks import run_sql
from .threadstate import WorkerHeld

pytestmark = pytest.mark.asyncio

_HELD = 0.4  # seconds a call that needs the worker is seen not to end while it is held


def _on_thread(engine: Any, method: str, thread: int) -> list[int]:
    """Record each call of ``engine.method`` made on ``thread``."""
    calls: list[int] = []
    real = getattr(engine, method)

    def spy(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == thread:
            calls.append(1)
        return real(*args, **kwargs)

    setattr(engine, method, spy)
    return calls


@pytest.mark.parametrize("pending", [False, True])
async def test_a_reap_that_falls_due_after_the_look_is_left_to_the_worker(
        tmp_path: Path, pending: bool) -> None:
    """The take on the loop looked whether a reap is due, and none was; it fell due before
    the take (say while the take wrote the puts pending): the take returns no expired
    lease on the loop, and the reap and the take are the worker's, in FIFO order."""
    path = str(tmp_path / "q.sqlite")
    async with await Queue.create(path, calls_on_loop=True) as q:
        await q.put_many(["a", "b"])
        msg = await q.lease(ttl=0.05)
        assert msg.item == "a"
        await asyncio.sleep(0.1)  # the lease ran out
        core = q._core
        core._next_reap = time.monotonic() + 3600  # not due at the look
        look = core.reap_due

        def look_then_due() -> bool:
            due = look()
            core._next_reap = 0.0  # due right after the look
            return due

        core.reap_due = look_then_due  # type: ignore[method-assign]
        expires = _on_thread(core.engine, "expire", threading.get_ident())
        async with WorkerHeld(q):
            calls = [q.get()] if not pending else [q.put("c"), q.get()]
            tasks = [asyncio.ensure_future(c) for c in calls]
            done, _ = await asyncio.wait(tasks, timeout=_HELD)
            assert not expires, "expired leases were returned to the queue on the loop"
            assert tasks[-1] not in done  # the take waits for the worker
        got = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert got[-1] == "a"
        del core.reap_due
        rest = ["b", "c"] if pending else ["b"]
        assert await asyncio.wait_for(q.get_many(len(rest)), 5) == rest
        assert q.qsize() == 0 and q.stats["leased"] == 0
        assert q.stats["redelivered"] == 1
    with spoolq.SyncQueue.create(path) as again:
        assert again.qsize() == 0 and again.stats["leased"] == 0


@pytest.mark.parametrize("with_get", [False, True])
async def test_a_batch_refused_on_the_loop_is_written_apart_by_the_worker(
        tmp_path: Path, with_get: bool) -> None:
    """A batch of puts whose write fails on the loop for another reason than a lock (a
    record SQLite refuses here) is written apart, to fail only the put of the record
    refused, by the worker: not one transaction per put on the loop."""
    path = str(tmp_path / "q.sqlite")
    items = [f"item {k}" for k in range(12)]
    bad = "refused " + "x" * 40
    async with await Queue.create(path, calls_on_loop=True) as q:
        await q.put("first")
        size = len(q._core.encode_one(bad)[0][0])
        assert all(len(q._core.encode_one(i)[0][0]) != size for i in items)
        run_sql(path, f"CREATE TRIGGER refuse BEFORE INSERT ON spoolq_records "
                     f"WHEN length(NEW.data) = {size} BEGIN SELECT RAISE(ABORT, 'refused'); END")
        appends = _on_thread(q._core.engine, "append", threading.get_ident())
        async with WorkerHeld(q):
            puts = [q.put(i) for i in items[:6]] + [q.put(bad)] + [q.put(i) for i in items[6:]]
            tasks = [asyncio.ensure_future(c) for c in [*puts, *([q.get()] if with_get else [])]]
            done, _ = await asyncio.wait(tasks, timeout=_HELD)
            assert not done, "the batch was written apart on the loop"
            assert len(appends) <= 2  # the batch's own write, not one for each put
        got = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        assert got[:6] + got[7:13] == [None] * 12
        assert isinstance(got[6], SpoolqError) and "refused" in str(got[6])
        if with_get:
            assert got[13] == "first"
        else:
            assert await q.get() == "first"
        assert q.qsize() == 12 and q.stats["puts"] == 13
        # Puts of different tasks made at once have no order among them (and writing
        # apart stores the halves that succeed first).
        assert sorted(await asyncio.wait_for(q.get_many(12), 5)) == sorted(items)
        assert q.qsize() == 0
    run_sql(path, "DROP TRIGGER refuse")
    with spoolq.SyncQueue.create(path) as again:
        assert again.qsize() == 0


def _docs(n: int) -> list[bytes]:
    rnd = random.Random(1)
    words = ["alpha", "beta", "gamma", "delta", "order", "user", "item", "price", "qty"]
    return [json.dumps({"n": i, "rows": [{"k": rnd.choice(words), "v": rnd.randint(0, 10**6)}
                                         for _ in range(500)]}).encode() for i in range(n)]


@pytest.mark.parametrize("call", ["get", "get_many", "lease", "cancelled"])
async def test_a_dictionary_another_handle_trained_is_loaded_on_the_worker(
        tmp_path: Path, call: str) -> None:
    """A take on the loop meets records compressed with a zstd dictionary that another
    handle trained after this one opened: the dictionaries are read, and the records
    decoded, on the worker; the caller gets its items in order, and a caller cancelled
    meanwhile leaves them in the queue."""
    path = str(tmp_path / "q.sqlite")
    docs = _docs(103)
    async with await Queue.create(path, serializer="raw", compressor="zstd-dict",
                                  calls_on_loop=True) as q:
        with spoolq.SyncQueue.create(path, serializer="raw", compressor="zstd-dict") as other:
            other.put_many(docs[:100])  # trains the dictionary, on this handle
            for doc in docs[100:]:
                other.put(doc)  # compressed with it
        engine = q._core.engine
        assert spoolq.codec.record_dictionary(engine.peek("default", 1, offset=100)[0].data)
        assert await asyncio.wait_for(q.get_many(100), 5) == docs[:100]
        assert q.qsize() == 3
        peeks = _on_thread(engine, "peek", threading.get_ident())
        async with WorkerHeld(q):
            if call == "get":
                task = asyncio.ensure_future(q.get())
            elif call == "get_many":
                task = asyncio.ensure_future(q.get_many(2))
            else:
                task = asyncio.ensure_future(q.lease(ttl=30))
            done, _ = await asyncio.wait([task], timeout=_HELD)
            assert not peeks, "the dictionaries were read on the loop"
            assert not done, "the record was decoded on the loop"
            if call == "cancelled":
                task.cancel()
        if call == "cancelled":
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.wait_for(q.get_many(3), 5) == docs[100:]
        else:
            got = await asyncio.wait_for(task, 5)
            if call == "lease":
                assert got.item == docs[100]
                await q.ack(got)
                assert await asyncio.wait_for(q.get_many(2), 5) == docs[101:]
            else:
                assert got == (docs[100] if call == "get" else docs[100:102])
                assert await asyncio.wait_for(q.get_many(3, timeout=1), 5) == (
                    docs[101:] if call == "get" else docs[102:])
        assert q.qsize() == 0 and q.stats["leased"] == 0 and q.stats["dead"] == 0
