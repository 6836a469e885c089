"""Durability levels, group commit, and waiting across processes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import Queue, SyncQueue
from spoolq.engines import Engine, open_engine

from .conftest import queue_path


class CountingEngine:
    """Delegates to a real engine and counts append transactions."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.appends: list[int] = []

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        self.appends.append(len(records))
        return self._inner.append(queue, records, raw_sizes, now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_concurrent_threads_share_transactions(disk_path: str) -> None:
    engine = CountingEngine(open_engine(disk_path, durability="fsync"))
    with SyncQueue.create(disk_path, engine=engine, durability="fsync") as q:  # type: ignore[arg-type]
        def produce(base: int) -> None:
            for i in range(50):
                q.put(base + i)

        threads = [threading.Thread(target=produce, args=(t * 50,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(q.get_many(None)) == list(range(400))
    assert sum(engine.appends) == 400
    # Waiting threads are settled together by one flush: an fsync carries several puts.
    assert len(engine.appends) <= 200, f"{len(engine.appends)} transactions for 400 puts"


async def test_concurrent_tasks_share_transactions(disk_path: str) -> None:
    engine = CountingEngine(open_engine(disk_path, durability="fsync"))
    async with await Queue.create(disk_path, engine=engine,  # type: ignore[arg-type]
                                  durability="fsync") as q:
        await asyncio.gather(*(q.put(i) for i in range(64)))
        assert await q.get_many(64) == list(range(64))
    assert sum(engine.appends) == 64
    assert len(engine.appends) <= 4


def test_buffer_writes_every_flush_items(disk_path: str) -> None:
    engine = CountingEngine(open_engine(disk_path))
    with SyncQueue.create(disk_path, engine=engine, durability="buffer",  # type: ignore[arg-type]
                          flush_items=10, flush_interval=3600) as q:
        for i in range(25):
            q.put(i)
        assert engine.appends == [10, 10]
        assert q.qsize() == 25
        assert q.get() == 0  # a get sees buffered items: it flushes first
        assert engine.appends == [10, 10, 5]
    with SyncQueue.create(disk_path) as q:
        assert q.get_many(None) == list(range(1, 25))


async def test_buffer_writes_every_flush_interval(disk_path: str) -> None:
    engine = CountingEngine(open_engine(disk_path))
    async with await Queue.create(disk_path, engine=engine,  # type: ignore[arg-type]
                                  durability="buffer", flush_items=1000,
                                  flush_interval=0.05) as q:
        await q.put("a")
        assert engine.appends == []
        await asyncio.sleep(0.3)
        assert engine.appends == [1]


def test_buffer_is_flushed_on_close(disk_path: str) -> None:
    with SyncQueue.create(disk_path, durability="buffer", flush_interval=3600) as q:
        q.put_many(["x", "y"])
    with SyncQueue.create(disk_path) as q:
        assert q.get_many(None) == ["x", "y"]


def test_buffer_hands_out_unwritten_puts_when_the_file_holds_none(disk_path: str) -> None:
    engine = CountingEngine(open_engine(disk_path))
    with SyncQueue.create(disk_path, engine=engine, durability="buffer",  # type: ignore[arg-type]
                          flush_items=3, flush_interval=3600) as q:
        q.put_many(["a", "b"])
        assert q.get() == "a"  # the file is empty: taken from the buffer, never written
        assert q.qsize() == 1
        q.put("c")
        q.put("d")  # three pending: the flush writes what is left of the buffer
        assert engine.appends == [3]
        q.put("e")
        assert q.get_many(None) == ["b", "c", "d", "e"]  # the file's records come first
        assert engine.appends == [3, 1]
        q.put("f")
        assert q.get() == "f"
        q.flush()
        assert engine.appends == [3, 1]  # nothing left to write, not even an empty batch
        stats = q.stats
        assert (stats["puts"], stats["gets"], stats["count"], stats["raw_size_bytes"]) \
            == (6, 6, 0, 0)
    with SyncQueue.create(disk_path) as q:
        assert q.qsize() == 0


async def test_async_buffer_give_back_keeps_fifo(disk_path: str) -> None:
    async with await Queue.create(disk_path, durability="buffer", flush_interval=3600) as q:
        for i in range(20):
            await q.put(i)
            assert await q.get() == i
        await q.put_many(["x", "y"])
        waiting = asyncio.create_task(q.get_many(5))  # takes x and y, waits for three more
        await asyncio.sleep(0.05)
        await q.put("z")
        await q.flush()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await q.get_many(3) == ["x", "y", "z"]


def test_buffer_give_back_after_a_later_flush_keeps_fifo(disk_path: str) -> None:
    q: SyncQueue[str] = SyncQueue.create(disk_path, durability="buffer", flush_interval=3600)
    q.put_many(["x", "y"])
    outcome: list[object] = []

    def getter() -> None:
        try:
            outcome.append(q.get_many(5))
        except spoolq.QueueShutDown as exc:
            outcome.append(exc)

    thread = threading.Thread(target=getter)
    thread.start()
    time.sleep(0.2)  # it holds x and y and waits for three more
    q.put("z")
    q.flush()
    q.close()  # shuts the getter down: it gives x and y back
    thread.join(5)
    assert isinstance(outcome[0], spoolq.QueueShutDown)
    with SyncQueue.create(disk_path) as again:
        assert again.get_many(None) == ["x", "y", "z"]


def test_buffer_gets_older_items_another_handle_wrote_first(tmp_path: Path) -> None:
    path = str(tmp_path / "two.sqlite")
    with SyncQueue.create(path, durability="buffer", flush_interval=3600) as buffered, \
            SyncQueue.create(path) as other:
        assert buffered.qsize() == 0  # its counts: an empty file
        other.put("x")
        buffered.put("y")
        assert buffered.get() == "x"
        assert buffered.get() == "y"


def test_purge_drops_the_buffer_and_its_sizes(disk_path: str) -> None:
    with SyncQueue.create(disk_path, durability="buffer", flush_interval=3600) as q:
        q.put("a" * 50)
        q.put_many(["b", "c"])
        assert q.purge() == 3
        stats = q.stats
        assert (stats["count"], stats["raw_size_bytes"], stats["compressed_size_bytes"]) \
            == (0, 0, 0)
        q.put("d")
        assert q.get_many(None) == ["d"]


BUFFERED = textwrap.dedent("""
    import sys, spoolq
    q = spoolq.SyncQueue.create(sys.argv[1], durability="buffer", flush_items=10,
                                flush_interval=3600)
    for i in range(25):
        q.put(i)
    print("done", flush=True)
    import time; time.sleep(60)
""")


def test_killed_process_loses_at_most_the_buffer(tmp_path: Path, disk_engine: str) -> None:
    path = queue_path(tmp_path, disk_engine)
    with subprocess.Popen([sys.executable, "-c", BUFFERED, path], stdout=subprocess.PIPE,
                          text=True) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "done"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    with SyncQueue.create(path) as q:
        assert q.get_many(None) == list(range(20))


CONSUMER = textwrap.dedent("""
    import sys, time, spoolq
    with spoolq.SyncQueue.create(sys.argv[1]) as q:
        print("ready", flush=True)
        item = q.get(timeout=20)
        print(time.time(), item, flush=True)
""")


def test_waiting_consumer_sees_another_process_put_promptly(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    with SyncQueue.create(path) as q, subprocess.Popen(
            [sys.executable, "-c", CONSUMER, path], stdout=subprocess.PIPE,
            text=True) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        put_at = time.time()
        q.put("hello")
        got_at, item = child.stdout.readline().split()
        child.wait(10)
    assert item == "hello"
    assert float(got_at) - put_at < 0.5


def test_bad_durability_is_refused(path: str) -> None:
    try:
        SyncQueue.create(path, durability="eventually")
    except spoolq.ConfigurationError as exc:
        assert "durability" in str(exc)
    else:
        raise AssertionError("an unknown durability was accepted")


def test_flush_writes_the_buffer_now(disk_path: str) -> None:
    engine = CountingEngine(open_engine(disk_path))
    with SyncQueue.create(disk_path, engine=engine, durability="buffer",  # type: ignore[arg-type]
                          flush_items=1000, flush_interval=3600) as q:
        q.put_many(["a", "b"])
        assert engine.appends == []
        q.flush()
        assert engine.appends == [2]
        q.flush()
        assert engine.appends == [2]


async def test_async_flush_writes_the_buffer_now(disk_path: str) -> None:
    engine = CountingEngine(open_engine(disk_path))
    async with await Queue.create(disk_path, engine=engine,  # type: ignore[arg-type]
                                  durability="buffer", flush_interval=3600) as q:
        await q.put("a")
        await q.flush()
        assert engine.appends == [1]


def test_get_nowait_sees_another_handles_put_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "two.sqlite")
    with SyncQueue.create(path) as a, SyncQueue.create(path) as b:
        assert b.qsize() == 0
        a.put("x")
        assert b.get_nowait() == "x"


def test_get_waits_quietly_while_only_delayed_items_exist(path: str) -> None:
    engine_calls: list[int] = []
    with SyncQueue.create(path, poll_interval=0.05) as q:
        q.put("later")
        q.nack(q.lease(), delay=0.5)
        take = q._core.take

        def counting_take(n: int, ttl: float | None, **options: Any) -> Any:
            engine_calls.append(n)
            return take(n, ttl, **options)

        q._core.take = counting_take  # type: ignore[method-assign]
        assert q.get(timeout=3) == "later"
    assert len(engine_calls) < 30, f"{len(engine_calls)} takes while waiting half a second"
