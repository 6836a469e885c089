"""Async quickstart: a producer and two workers sharing a durable queue."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import spoolq


async def worker(name: str, q: spoolq.Queue[dict[str, int]], done: list[int]) -> None:
    while True:
        job = await q.get()
        done.append(job["n"])
        q.task_done()


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with await spoolq.Queue.create(Path(tmp) / "jobs.sqlite") as q:
            done: list[int] = []
            workers = [asyncio.create_task(worker(f"w{i}", q, done)) for i in range(2)]
            for n in range(100):
                await q.put({"n": n})
            await q.join()
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            print(f"processed {len(done)} jobs; {q.qsize()} left; stats: {q.stats['puts']} puts")


if __name__ == "__main__":
    asyncio.run(main())
