"""The remote engine's close() and TLS checks, the async Queue's nack delays and
give-backs, and the lockless LMDB reads, each against real files, sockets and processes."""

from __future__ import annotations

import asyncio
import tracemalloc

from spoolq import Queue

# ---- a nack's delay ------------------------------------------------------------------------


async def test_nacks_with_a_delay_on_a_busy_queue_keep_no_memory_for_ever() -> None:
    # Each nack with a delay kept its visible-again time in a heap of the async Queue that
    # only a get finding the queue empty ever emptied: a consumer nacking items of a queue
    # with a backlog grew it by one entry per nack, without end.
    async with await Queue.create(":memory:") as q:
        await q.put_many(list(range(20)))

        async def cycle(times: int) -> None:
            for _ in range(times):
                msg = await q.lease()
                await q.nack(msg, delay=0.0005)  # visible again at once, nearly

        await cycle(200)
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            await cycle(4000)
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        spoolq_files = [tracemalloc.Filter(True, "*/spoolq/*")]
        grown = sum(stat.size_diff for stat in after.filter_traces(spoolq_files).compare_to(
            before.filter_traces(spoolq_files), "filename"))
        assert grown < 32 * 1024, f"{grown} bytes kept after 4000 nacks"
        await asyncio.sleep(0.05)  # the last nack's delay ends
        assert sorted(await q.get_many(None)) == list(range(20))  # none lost
