"""Batcher: whatever the work a plain sink hands to a thread pool ends with, the flush
ends with it: the batch is acked or given back, and the Batcher stops."""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spoolq import Batcher

# A pool thread whose work raises StopIteration (next() on an empty iterator, say), on the
# Batcher's first flush only; prints what flush() returned, the stats and what is left.
STOPITERATION_IN_THE_POOL = textwrap.dedent("""
    import asyncio, concurrent.futures, sys
    from spoolq import Batcher
    pool = concurrent.futures.ThreadPoolExecutor(1)
    received = []
    def send(batch):
        received.append(list(batch))
        if len(received) == 1:
            next(iter([]))
    async def main():
        b = Batcher(lambda batch: pool.submit(send, batch), queue=sys.argv[1],
                    flush_interval=60, lease_ttl=1)
        await b.start()
        await b.add_many([1, 2, 3])
        print("flush", await b.flush(), flush=True)
        print("failures", b.stats["failures"], "flushes", b.stats["flushes"], flush=True)
        print("left", await b.queue.peek(5), flush=True)
        await b.stop()
        print("received", received, flush=True)
    asyncio.run(main())
""")


def test_work_that_raises_stopiteration_in_a_pool_thread_fails_its_flush(
        tmp_path: Path) -> None:
    # asyncio refuses StopIteration as a future's exception: a future wrapping the pool's
    # one never ended, and the flush (and stop) waited for it for ever.
    done = subprocess.run([sys.executable, "-c", STOPITERATION_IN_THE_POOL,
                           str(tmp_path / "q.sqlite")], check=False, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "flush False", "failures 1 flushes 0", "left [1, 2, 3]",
        "received [[1, 2, 3], [1, 2, 3]]"]


async def test_a_pool_thread_that_outlives_the_lease_may_share_its_batch_with_another_batcher(
        tmp_path: Path) -> None:
    # The flush waits for the thread past the deadline, but nothing extends the lease:
    # once it has run out, another Batcher on the file leases the batch while the thread
    # still sends it, and the flush that waited fails (its nack finds the lease gone).
    events: list[tuple[str, list[int]]] = []
    path = str(tmp_path / "q.sqlite")

    def slow(batch: list[int]) -> None:
        events.append(("thread began", batch))
        time.sleep(1.5)  # a thread cannot be interrupted
        events.append(("thread ended", batch))

    async def other(batch: list[int]) -> None:
        events.append(("other Batcher", batch))

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        a = Batcher(lambda batch: pool.submit(slow, batch), queue=path, flush_interval=60,
                    lease_ttl=0.4)
        b = Batcher(other, queue=path, flush_interval=0.05)
        await a.start()
        await a.add_many([1, 2])
        flushing = asyncio.ensure_future(a.flush())
        while not events:
            await asyncio.sleep(0.01)
        await b.start()
        assert await asyncio.wait_for(flushing, 10) is False
        await b.stop()
        await a.stop()
    assert events == [("thread began", [1, 2]), ("other Batcher", [1, 2]),
                      ("thread ended", [1, 2])]
    assert a.stats["failures"] == 1 and a.stats["flushes"] == 0
    assert b.stats["flushes"] == 1


async def test_sys_exit_in_a_pool_thread_gives_the_batch_back_and_leaves_flush(
        tmp_path: Path) -> None:
    # As when the future's result() is read, or a run_in_executor future awaited: the
    # SystemExit reaches the flush's caller, not the failure count.
    received: list[list[int]] = []

    def send(batch: list[int]) -> None:
        received.append(list(batch))
        if len(received) == 1:
            sys.exit(3)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        b = Batcher(lambda batch: pool.submit(send, batch), queue=str(tmp_path / "q.sqlite"),
                    flush_interval=60)
        await b.start()
        await b.add_many([1, 2])
        with pytest.raises(SystemExit):
            await b.flush()
        assert b.stats["failures"] == 0 and b.stats["flushes"] == 0
        assert b.queue.stats["leased"] == 0  # back in its place at once
        assert await b.queue.peek(5) == [1, 2]
        await b.stop()
    assert received == [[1, 2], [1, 2]]
