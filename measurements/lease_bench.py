"""Leases and the Batcher: lease+ack rates next to plain get, and Batcher.add next to Beque.

Run from the repository root::

    python -m measurements.lease_bench            # N=20000 per row
    python -m measurements.lease_bench --n 5000   # quicker
    python -m measurements.lease_bench --engine sqlite --engine lmdb

Every row runs in this process, one after the other, on 100-byte items; only
the ratios within one run mean anything on a shared machine.
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


def _rate(n: int, fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def queue_rows(engine: str, n: int, tmp: str) -> dict[str, float]:
    rows: dict[str, float] = {}
    try:
        q = spoolq.SyncQueue.create(_path(tmp, engine))
    except spoolq.ConfigurationError:
        return rows
    with q:
        q.put_many([ITEM] * n)
        rows["get"] = _rate(n, lambda: [q.get() for _ in range(n)] and None)
        q.put_many([ITEM] * n)

        def lease_ack() -> None:
            for _ in range(n):
                q.ack(q.lease())

        rows["lease+ack"] = _rate(n, lease_ack)
        q.put_many([ITEM] * n)
        rows["get_many(100)"] = _rate(n, lambda: [q.get_many(100) for _ in range(n // 100)]
                                      and None)
        q.put_many([ITEM] * n)

        def lease_ack_many() -> None:
            for _ in range(n // 100):
                q.ack(*q.lease_many(100))

        rows["lease_many(100)+ack"] = _rate(n, lease_ack_many)
    return rows


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
