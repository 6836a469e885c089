"""Queue (asyncio): the line of waiting gets and leases when the records come from another
process sharing the file, which only a read of the counts finds."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from spoolq import Queue

from .conftest import SHARED_ENGINES, queue_path

PUT = "import sys, spoolq\nwith spoolq.SyncQueue.create(sys.argv[1]) as q: q.put(sys.argv[2])"


async def put_from_another_process(path: str, item: str) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", PUT, path, item)
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def take(q: Queue[Any], call: str) -> Any:
    if call == "get":
        return await q.get()
    msg = await q.lease(ttl=60)
    await q.ack(msg)
    return msg.item


@pytest.mark.parametrize("call", ["get", "lease"])
@pytest.mark.parametrize("engine", SHARED_ENGINES)
async def test_the_first_in_line_takes_as_soon_as_a_call_behind_it_reads_the_records(
        tmp_path: Path, engine: str, call: str) -> None:
    # The first call sleeps until its poll timer; the second starts once the poll interval
    # has passed since the counts were read, so it reads them and finds the record another
    # process put. The first takes it at once: it slept until its own timer instead
    # (the poll interval after it started waiting, 0.95 s later here).
    path = queue_path(tmp_path, engine)
    poll = 2.0
    async with await Queue.create(path, poll_interval=poll) as q:
        opened = time.monotonic()  # the counts were read before this
        await asyncio.sleep(1.0)
        first = asyncio.create_task(take(q, call))
        await asyncio.sleep(0.05)
        await put_from_another_process(path, "x")
        assert not first.done()  # its poll timer has not fired: it knows of no record
        await asyncio.sleep(max(opened + poll + 0.05 - time.monotonic(), 0.0))
        started = time.monotonic()
        second = asyncio.create_task(take(q, call))
        assert await asyncio.wait_for(first, 10) == "x"
        took = time.monotonic() - started
        assert not second.done()
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
    assert took < 0.4


@pytest.mark.parametrize("call", ["get_many", "lease"])
@pytest.mark.parametrize("engine", SHARED_ENGINES)
async def test_a_call_whose_timeout_passes_looks_at_the_file_once_more(
        tmp_path: Path, engine: str, call: str) -> None:
    # The record is in the file before the call starts, and stays there all its timeout;
    # the counts were read less than a poll interval before the timeout passed.
    path = queue_path(tmp_path, engine)
    async with await Queue.create(path, poll_interval=60.0) as q:
        await put_from_another_process(path, "x")
        if call == "get_many":
            got = await q.get_many(1, timeout=0.3)
        else:
            msg = await q.lease(timeout=0.3, ttl=60)
            await q.ack(msg)
            got = [msg.item]
    assert got == ["x"]
