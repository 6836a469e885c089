"""Batcher: whatever the work a plain sink hands to a thread pool ends with, the flush
ends with it: the batch is acked or given back, and the Batcher stops."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

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
