"""Batcher on a bounded queue: an add that finds no room waits for the flush it asks the
background flusher for; once that flusher has ended (a sink that raised a BaseException
that is not an Exception ends it), nothing would make room, and the add waited for ever.
It raises RuntimeError instead, storing nothing."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from spoolq import Batcher, Queue

from .batching import Halt, end_the_flusher


async def test_an_add_finding_no_room_raises_once_the_flusher_ended(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, "spoolq")

    async def sink(batch: list[int]) -> None:
        raise Halt

    async with await Queue.create(str(tmp_path / "q.sqlite"), maxsize=2) as q:
        b = Batcher(sink, queue=q, max_batch_size=1, flush_interval=60)
        await b.start()
        await end_the_flusher(b)  # a full batch: its flush ends the flusher
        await b.add(2)
        with pytest.raises(RuntimeError, match="flusher"):
            await asyncio.wait_for(b.add(3), 10)  # no room, and no flusher to make it
        assert await q.peek(5) == [1, 2]
        with pytest.raises(Halt):
            await b.stop()


async def test_an_add_waiting_for_room_raises_when_the_flusher_is_cancelled(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, "spoolq")
    calls: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        calls.append(batch)
        if len(calls) == 1:
            raise ConnectionError("the server is away")

    async with await Queue.create(str(tmp_path / "q.sqlite"), maxsize=2) as q:
        b = Batcher(sink, queue=q, max_batch_size=2, flush_interval=60, retry_delay=30,
                    max_retry_delay=30)
        await b.start()
        await b.add_many([1, 2])
        for _ in range(500):
            if calls:
                break
            await asyncio.sleep(0.01)
        assert calls == [[1, 2]] and b.stats["failures"] == 1
        adding = asyncio.create_task(b.add(3))  # no room: it waits for the retry
        await asyncio.sleep(0.1)
        assert not adding.done()
        # A shutdown that cancels every task it finds ends the flusher.
        flusher, = [t for t in asyncio.all_tasks() if t.get_name() == "spoolq-batcher-batcher"]
        flusher.cancel()
        with pytest.raises(RuntimeError, match="flusher"):
            await asyncio.wait_for(adding, 10)
        assert await q.peek(5) == [1, 2]
        await b.stop()  # its last flush sends them
        assert calls == [[1, 2], [1, 2]] and q.qsize() == 0


async def test_an_add_with_room_still_stores_after_the_flusher_ended(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, "spoolq")

    async def sink(batch: list[int]) -> None:
        raise Halt

    async with await Queue.create(str(tmp_path / "q.sqlite"), maxsize=4) as q:
        b = Batcher(sink, queue=q, max_batch_size=1, flush_interval=60)
        await b.start()
        await end_the_flusher(b)  # a full batch: its flush ends the flusher
        await b.add(2)  # room: it waits in the queue for a flush()
        assert await q.peek(5) == [1, 2]
        with pytest.raises(Halt):
            await b.stop()



async def test_an_add_stores_when_another_process_made_room(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # With the flusher ended, the Batcher's count (not read again for a minute) says the
    # queue is full; another process took an item meanwhile. The add looks at the file
    # before it gives up, as a put with a timeout does, and stores its item there.
    caplog.set_level(logging.CRITICAL, "spoolq")
    path = str(tmp_path / "q.sqlite")

    async def sink(batch: list[int]) -> None:
        raise Halt

    async with await Queue.create(path, maxsize=2, poll_interval=60) as q:
        b = Batcher(sink, queue=q, max_batch_size=1, flush_interval=60)
        await b.start()
        await end_the_flusher(b)  # a full batch: its flush ends the flusher
        await b.add(2)
        assert q.qsize() == 2
        subprocess.run([sys.executable, "-c", "import spoolq, sys; "
                        "q = spoolq.SyncQueue.create(sys.argv[1]); "
                        "assert q.get(timeout=5) == 1; q.close()", path], check=True, timeout=60)
        await asyncio.wait_for(b.add(3), 10)
        assert await q.peek(5) == [2, 3]
        with pytest.raises(RuntimeError, match="flusher"):
            await asyncio.wait_for(b.add(4), 10)  # and without room, it still raises
        assert await q.peek(5) == [2, 3]
        with pytest.raises(Halt):
            await b.stop()
