"""What a queue's reap costs while it holds many leases, on each file engine.

Run from the repository root::

    python -m measurements.lease_scale                 # 1,000 and 100,000 leases
    python -m measurements.lease_scale --leases 250000 --engine lmdb

For each engine and lease count it fills a queue, leases every record for an hour
(none runs out), then times the two engine calls a handle's reap makes: ``expire``
(twice a second with the default ``poll_interval``; on SQLite it holds the write lock)
and ``owners`` (every 2 s, to find leases of processes that died). Medians of
``--repeat`` calls, in milliseconds. A handle spaces these calls out when they take
long (docs/leases.md), so they never take more than about a twentieth of its time;
this shows what each one costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial

from spoolq.engines import Engine, Lease, open_engine

FILES = {"sqlite": "q.sqlite", "lmdb": "q.lmdb", "dbm": "q.dbm", "pickle": "q.pickle"}
CHUNK = 10_000
RECORD = b"r" * 100


def _filled(engine: str, leases: int, tmp: str) -> Engine:
    eng = open_engine(os.path.join(tmp, f"{leases}-{FILES[engine]}"), engine,
                      durability="commit")
    now = time.time()
    for start in range(0, leases, CHUNK):
        k = min(CHUNK, leases - start)
        eng.append("q", [RECORD] * k, [len(RECORD)] * k, now)
        eng.take("q", k, now, Lease("consumer-1", now + 3600))
    return eng


def _expire_now(eng: Engine) -> int:
    return eng.expire("q", time.time())


def _median_ms(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leases", type=int, action="append",
                        help="leases held (repeatable; default 1,000 and 100,000)")
    parser.add_argument("--engine", action="append", choices=sorted(FILES),
                        help="engine (repeatable; default every file engine)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    counts = args.leases or [1_000, 100_000]
    engines = args.engine or sorted(FILES)
    print(f"## A reap's engine calls with many leases held, median of {args.repeat}\n")
    print("| engine | leases | expire, none due (ms) | owners (ms) |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            for leases in counts:
                eng = _filled(engine, leases, tmp)
                try:
                    expire = _median_ms(partial(_expire_now, eng), args.repeat)
                    owners = _median_ms(partial(eng.owners, "q"), args.repeat)
                    assert eng.counts("q").leased == leases
                finally:
                    eng.close()
                print(f"| {engine} | {leases:,} | {expire:,.2f} | {owners:,.2f} |", flush=True)


if __name__ == "__main__":
    main()
