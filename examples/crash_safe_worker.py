"""A crash-safe worker: jobs are leased, and only acked once done.

A worker killed while it works on a job does not lose it: the job is
delivered again (``attempts`` grows) when the file is next opened on this
host or its ``ttl`` runs out. This demo keeps its file in a temporary folder,
so it shows the other half: jobs that fail three times move to the dead
letters. Run it with ``python examples/crash_safe_worker.py``.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import spoolq


async def handle(job: dict[str, int]) -> None:
    if job["n"] % 7 == 3:
        raise ValueError(f"job {job['n']} is malformed")
    await asyncio.sleep(0.001)


async def worker(q: spoolq.Queue[dict[str, int]], done: list[int]) -> None:
    while True:
        try:
            async with q.leased(ttl=60, timeout=0.2) as job:
                await handle(job)
                done.append(job["n"])
        except spoolq.Empty:
            return
        except ValueError:
            continue  # nacked by leased(); delivered again until max_attempts


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with await spoolq.Queue.create(Path(tmp) / "jobs.sqlite", max_attempts=3) as q:
            await q.put_many({"n": n} for n in range(30))
            done: list[int] = []
            await asyncio.gather(*(worker(q, done) for _ in range(3)))
            dead = await q.peek(10, dead=True)
            print(f"done {len(done)} jobs; {q.stats['dead']} dead letters: {dead}")


if __name__ == "__main__":
    asyncio.run(main())
