"""qsize() of the async queue while records a cancelled get took go back to the queue:
they count once all along, never twice (and never not at all)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from pathlib import Path

import spoolq


def test_a_give_back_counts_its_records_once_as_it_restores_them(tmp_path: Path) -> None:
    """The core tells its listeners of the give-back under way, on the worker thread,
    after it raised its ready count: qsize() read there counts each record once."""

    async def main() -> None:
        q = await spoolq.Queue.create(str(tmp_path / "q.sqlite"), poll_interval=30.0)
        try:
            await q.put_many([0, 1, 2])
            seen: list[int] = []
            getter = asyncio.create_task(q.get_many(5))  # takes the 3, waits for 2 more
            deadline = time.monotonic() + 5.0
            while q.qsize():
                assert time.monotonic() < deadline, "the get took nothing"
                await asyncio.sleep(0.005)
            q._core.listeners.append(lambda: seen.append(q.qsize()))
            getter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getter
            assert await q.get_many(3, timeout=5) == [0, 1, 2]  # after the give-back
            assert seen, "the give-back told no listener"
            assert seen[0] == 3, f"qsize() during the give-back: {seen}"
        finally:
            await q.aclose()

    asyncio.run(main())


def test_qsize_never_counts_given_back_records_twice(tmp_path: Path) -> None:
    """Gets cancelled at random moments (before, during and after their take on the
    worker) while another thread reads qsize() without pause: with no put and no get
    returning, the queue holds N items throughout."""
    n_items = 20

    async def main() -> tuple[int, int]:
        q = await spoolq.Queue.create(str(tmp_path / "q.sqlite"), poll_interval=30.0)
        highest = 0
        reads = 0
        stop = threading.Event()

        def watch() -> None:
            nonlocal highest, reads
            while not stop.is_set():
                highest = max(highest, q.qsize())
                reads += 1

        try:
            await q.put_many(range(n_items))
            watcher = threading.Thread(target=watch)
            watcher.start()
            rng = random.Random(7)
            ends = time.monotonic() + 1.5
            try:
                while time.monotonic() < ends:
                    getter = asyncio.create_task(q.get_many(n_items + 1))
                    await asyncio.sleep(rng.random() * 0.002)
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
            finally:
                stop.set()
                watcher.join()
            assert len(await q.get_many(n_items, timeout=5)) == n_items
        finally:
            await q.aclose()
        return highest, reads

    highest, reads = asyncio.run(main())
    assert reads > 1000
    assert highest <= n_items, f"qsize() read {highest} of {n_items} items"
