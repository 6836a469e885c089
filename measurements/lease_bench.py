"""Leases and the Batcher: lease+ack rates next to plain get, and Batcher.add next to Beque.

Run from the repository root::

    python -m measurements.lease_bench            # N=20000 per row
    python -m measurements.lease_bench --n 5000   # quicker
    python -m measurements.lease_bench --engine sqlite --engine lmdb

Everything runs in this process on 100-byte items. For each engine the four
ways of taking items take turns in ten rounds, so a change in the machine's
load weighs on all of them alike; only the ratios within one run mean
anything on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import spoolq

ITEM = {"id": 1, "payload": "x" * 80}
ENGINES = {"memory": ":memory:", "sqlite": "q.sqlite", "lmdb": "q.lmdb", "dbm": "q.dbm",
           "pickle": "q.pickle"}


def _path(tmp: str, engine: str) -> str:
    suffix = ENGINES[engine]
    return suffix if suffix == ":memory:" else os.path.join(tmp, f"{time.monotonic_ns()}{suffix}")


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


ROUNDS = 10


def queue_rows(engine: str, n: int, tmp: str) -> dict[str, float]:
    """Rates of get, lease+ack, get_many(100) and lease_many(100)+ack on one queue.

    The four take turns in ``ROUNDS`` rounds of ``n / ROUNDS`` items each, so a
    change in the machine's load during the run weighs on all of them alike.
    """
    rows: dict[str, float] = {}
    try:
        q = spoolq.SyncQueue.create(_path(tmp, engine))
    except spoolq.ConfigurationError:
        return rows
    m = max(n // ROUNDS // 100 * 100, 100)

    def get() -> None:
        for _ in range(m):
            q.get()

    def lease_ack() -> None:
        for _ in range(m):
            q.ack(q.lease())

    def get_many() -> None:
        for _ in range(m // 100):
            q.get_many(100)

    def lease_ack_many() -> None:
        for _ in range(m // 100):
            q.ack(*q.lease_many(100))

    kinds = {"get": get, "lease+ack": lease_ack, "get_many(100)": get_many,
             "lease_many(100)+ack": lease_ack_many}
    spent = dict.fromkeys(kinds, 0.0)
    with q:
        for _ in range(ROUNDS):
            for kind, fn in kinds.items():
                q.put_many([ITEM] * m)
                spent[kind] += _timed(fn)
    return {kind: m * ROUNDS / seconds for kind, seconds in spent.items()}


async def batcher_rows(n: int, tmp: str) -> dict[str, float]:
    async def sink(batch: list[object]) -> None:
        return None

    rows: dict[str, float] = {}
    for engine in ("memory", "sqlite"):
        async with spoolq.Batcher(sink, queue=_path(tmp, engine), max_batch_size=100,
                                  flush_interval=60) as b:
            start = time.perf_counter()
            for _ in range(n):
                await b.add(ITEM)
            rows[f"spoolq Batcher.add ({engine})"] = n / (time.perf_counter() - start)
        async with spoolq.Batcher(sink, queue=_path(tmp, engine), max_batch_size=100,
                                  flush_interval=60) as b:
            start = time.perf_counter()
            for _ in range(n // 100):
                await b.add_many([ITEM] * 100)
            rows[f"spoolq Batcher.add_many(100) ({engine})"] = n / (time.perf_counter() - start)
    try:
        from beque import Beque
    except ImportError:
        return rows
    async with Beque(on_flush=sink, max_batch_size=100, flush_interval=60) as bq:
        start = time.perf_counter()
        for _ in range(n):
            await bq.add(ITEM)
        rows["Beque.add (memory only)"] = n / (time.perf_counter() - start)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--engine", action="append", choices=sorted(ENGINES),
                        help="engines to measure (repeatable; default: all)")
    parser.add_argument("--no-batcher", action="store_true", help="skip the Batcher rows")
    args = parser.parse_args()
    n = args.n - args.n % 100
    with tempfile.TemporaryDirectory() as tmp:
        print(f"## Leases, 100-byte items, N={n}, median of {args.repeat}\n")
        print("| engine | get /s | lease+ack /s | get_many(100) /s | lease_many(100)+ack /s "
              "| batched lease+ack / batched get |")
        print("|---|---|---|---|---|---|")
        for engine in args.engine or ENGINES:
            runs = [queue_rows(engine, n, tmp) for _ in range(args.repeat)]
            if not runs[0]:
                print(f"| {engine} | not available | | | | |")
                continue
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            ratio = med["lease_many(100)+ack"] / med["get_many(100)"]
            print(f"| {engine} | {med['get']:,.0f} | {med['lease+ack']:,.0f} | "
                  f"{med['get_many(100)']:,.0f} | {med['lease_many(100)+ack']:,.0f} | "
                  f"{ratio:.2f} |")
        if args.no_batcher:
            return
        print(f"\n## Batcher, no-op sink, N={n}, median of {args.repeat}\n")
        runs_b = [asyncio.run(batcher_rows(n, tmp)) for _ in range(args.repeat)]
        print("| contestant | adds /s |")
        print("|---|---|")
        for key in runs_b[0]:
            print(f"| {key} | {statistics.median(r[key] for r in runs_b):,.0f} |")


if __name__ == "__main__":
    main()
