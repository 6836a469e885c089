"""An async get_many that holds items while it waits for more hands them out without
waiting on the event loop for the queue's lock: the worker may hold it for as long as
another process holds the file's write lock (an ack waiting for it), and the loop froze
that long (1.4 s here, up to the busy timeout)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from spoolq import Queue

from .sqlite_locks import hold_lock


@pytest.mark.parametrize("on_loop", [False, True])
async def test_a_get_many_handing_out_does_not_stall_the_loop(tmp_path: Path,
                                                              on_loop: bool) -> None:
    path = str(tmp_path / "q.sqlite")
    q = await Queue[str].create(path, calls_on_loop=on_loop, poll_interval=5)
    await q.put_many(["m", "a"])
    msg = await q.lease(ttl=30)
    stall, stop = [0.0], [False]

    async def ticker() -> None:
        last = time.monotonic()
        while not stop[0]:
            await asyncio.sleep(0.001)
            now = time.monotonic()
            stall[0], last = max(stall[0], now - last), now

    ticking = asyncio.ensure_future(ticker())
    # It takes "a" and holds it while it waits for more, until its timeout.
    getting = asyncio.ensure_future(q.get_many(3, timeout=0.2))
    await asyncio.sleep(0.05)
    with hold_lock(path, 1.5) as holder:
        acking = asyncio.ensure_future(q.ack(msg))  # the worker waits for the file's lock
        assert await getting == ["a"]
        await acking
        holder.wait()
    stop[0] = True
    await ticking
    await q.aclose()
    assert stall[0] < 0.5, f"the event loop stalled {stall[0]:.2f} s"
