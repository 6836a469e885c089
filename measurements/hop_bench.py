"""What a thread hop costs the async queue: the same loops on one CPU and on all of them.

    PYTHONPATH=src python measurements/hop_bench.py [--n 5000] [--repeat 5]

The async ``Queue`` runs every call that touches a disk engine on its worker
thread, so one task awaiting one item at a time pays a hand-off to that thread
and back per call. This script measures, in child processes that take turns:

- ``hop``: a bare ``loop -> thread -> loop`` round trip (``queue.SimpleQueue``
  there, ``call_soon_threadsafe`` back), which is all the worker adds;
- ``Queue sqlite``: ``await put`` of N items, then ``await get`` of N
  (durability "commit", 100-byte items);
- ``SyncQueue sqlite``: the same loop without an event loop or a thread;

each once with the process free to use every CPU and once pinned to one CPU
(``os.sched_setaffinity``), where a hand-off is a context switch instead of a
wake-up of another, idle CPU. Linux only. Prints the medians and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

ITEM = {"id": 1, "kind": "order.created", "text": "x" * 60}


def hop(n: int) -> float:
    """Round trips per second between the event loop and a thread."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        jobs: queue.SimpleQueue[asyncio.Future[None] | None] = queue.SimpleQueue()

        def run() -> None:
            while (fut := jobs.get()) is not None:
                loop.call_soon_threadsafe(fut.set_result, None)

        thread = threading.Thread(target=run)
        thread.start()
        start = time.perf_counter()
        for _ in range(n):
            fut: asyncio.Future[None] = loop.create_future()
            jobs.put(fut)
            await fut
        rate = n / (time.perf_counter() - start)
        jobs.put(None)
        thread.join()
        return rate

    return asyncio.run(main())


def async_sqlite(n: int) -> float:
    """put+get operations per second through the async Queue on SQLite."""
    import spoolq

    async def main(folder: str) -> float:
        async with await spoolq.Queue.create(os.path.join(folder, "q.sqlite")) as q:
            start = time.perf_counter()
            for _ in range(n):
                await q.put(ITEM)
            for _ in range(n):
                await q.get()
            return 2 * n / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as folder:
        return asyncio.run(main(folder))


def sync_sqlite(n: int) -> float:
    """put+get operations per second through SyncQueue on SQLite."""
    import spoolq

    with tempfile.TemporaryDirectory() as folder, \
            spoolq.SyncQueue.create(os.path.join(folder, "q.sqlite")) as q:
        start = time.perf_counter()
        for _ in range(n):
            q.put(ITEM)
        for _ in range(n):
            q.get()
        return 2 * n / (time.perf_counter() - start)


LOOPS: dict[str, Callable[[int], float]] = {
    "hop (round trips/s)": hop, "Queue sqlite (ops/s)": async_sqlite,
    "SyncQueue sqlite (ops/s)": sync_sqlite}


def _child(name: str, n: int, pinned: bool, out: Any) -> None:
    if pinned:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    out.put(LOOPS[name](n))


def measure(name: str, n: int, pinned: bool) -> float:
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    proc = ctx.Process(target=_child, args=(name, n, pinned, out))
    proc.start()
    proc.join(300)
    if proc.is_alive():
        proc.terminate()
        proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"{name} failed (exit {proc.exitcode})")
    rate: float = out.get()
    return rate


def main() -> None:
    if not hasattr(os, "sched_setaffinity"):
        raise SystemExit("needs os.sched_setaffinity (Linux)")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="items (or round trips) per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (the median)")
    args = parser.parse_args()
    runs: dict[tuple[str, bool], list[float]] = {}
    for r in range(args.repeat):
        for name in LOOPS:
            for pinned in (False, True):
                rate = measure(name, args.n, pinned)
                runs.setdefault((name, pinned), []).append(rate)
                sys.stderr.write(f"run {r + 1}/{args.repeat} {name:26} "
                                 f"{'one CPU' if pinned else 'all CPUs':9} {rate:>10,.0f}\n")
    med = {key: statistics.median(v) for key, v in runs.items()}
    print(f"medians of {args.repeat} runs, N={args.n}, {os.cpu_count()} CPUs\n")
    print(f"{'':28}{'all CPUs':>12}{'one CPU':>12}{'one/all':>10}")
    for name in LOOPS:
        free, pinned = med[(name, False)], med[(name, True)]
        print(f"{name:28}{free:>12,.0f}{pinned:>12,.0f}{pinned / free:>10.2f}")
    for pinned in (False, True):
        ratio = med[("Queue sqlite (ops/s)", pinned)] / med[("SyncQueue sqlite (ops/s)", pinned)]
        print(f"Queue / SyncQueue on SQLite, {'one CPU' if pinned else 'all CPUs'}: {ratio:.2f}")


if __name__ == "__main__":
    main()
