"""PostgreSQL next to SQLite: puts/s and lease+ack/s through ``spoolq.SyncQueue``.

Run from the repository root (a PostgreSQL server must be reachable)::

    python measurements/postgres_bench.py
    python measurements/postgres_bench.py --url postgresql://me@dbhost/bench --seconds 5

Puts run in one process, with batches of 1 (``put``) and 100 (``put_many``).
Lease+ack runs in 1, 4 and 16 consumer processes on one queue, prefilled
beforehand, with batches of 1 (``lease`` + ``ack``) and 100 (``lease_many`` +
one ``ack`` of all); every process is started and has opened the queue before
the clock starts. "postgres, 1 counter row" is the same engine with
``counter_slots=1``, to show what a single counts row costs under concurrency.
Every engine runs with ``durability="commit"``. Items are ~100-byte dicts.
Prints a Markdown table; only ratios within one run mean much on a shared box.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import spoolq

ITEM = {"id": 1, "payload": "x" * 80}


def _open(target: dict[str, Any]) -> spoolq.SyncQueue[Any]:
    return spoolq.SyncQueue.create(target["path"], name=target.get("name", "bench"),
                                   poll_interval=0.05,
                                   engine_options=target.get("options"))


def consume(target: dict[str, Any], batch: int, seconds: float) -> None:
    """One consumer process: say ready, wait for "go", lease and ack until the queue
    is empty or the time is up, then print how many and when it stopped."""
    with _open(target) as q:
        print("ready", flush=True)
        sys.stdin.readline()
        deadline = time.time() + seconds
        done, last = 0, time.time()
        while last < deadline:
            try:
                msgs = q.lease_many(batch, timeout=0.5, ttl=300)
            except spoolq.Empty:
                break
            q.ack(*msgs)
            done += len(msgs)
            last = time.time()
        print(done, last, flush=True)


def put_rate(target: dict[str, Any], batch: int, seconds: float) -> float:
    with _open(target) as q:
        done, start = 0, time.perf_counter()
        items = [ITEM] * batch
        while (elapsed := time.perf_counter() - start) < seconds:
            if batch == 1:
                q.put(ITEM)
            else:
                q.put_many(items)
            done += batch
        return done / elapsed


def lease_rate(target: dict[str, Any], consumers: int, batch: int, seconds: float,
               prefill: int) -> float:
    target = {**target, "name": f"lease{consumers}x{batch}"}
    with _open(target) as q:
        for _ in range(0, prefill, 1000):
            q.put_many([ITEM] * 1000)
    if "options" in target:
        _vacuum(target["path"], target["options"]["schema"])
    spec = repr(target)
    procs = [subprocess.Popen([sys.executable, __file__, "--child", spec, str(batch),
                               str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(consumers)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a consumer failed to start")
        start = time.time()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=seconds + 60)
            count, ended = out.split()
            results.append((int(count), float(ended)))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    total = sum(count for count, _ in results)
    if total >= prefill:
        print(f"  note: the queue ran dry ({prefill} items); raise --prefill", file=sys.stderr)
    return total / (max(ended for _, ended in results) - start)


def _vacuum(url: str, schema: str) -> None:
    """Do what autovacuum would have done by now, so every cell starts from a tidy table
    even on a server with autovacuum off or behind."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("records", "counts"):
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}.{}").format(sql.Identifier(schema),
                                                                  sql.Identifier(table)))


def _drop_schema(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get(
        "SPOOLQ_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--prefill", type=int, default=0,
                        help="items put before each lease+ack run (default: by batch size)")
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--no-puts", action="store_true", help="measure lease+ack only")
    args = parser.parse_args()

    schemas = {"postgres": f"bench_{uuid.uuid4().hex[:8]}",
               "postgres, 1 counter row": f"bench_{uuid.uuid4().hex[:8]}"}
    with tempfile.TemporaryDirectory() as tmp:
        targets: dict[str, dict[str, Any]] = {
            "sqlite": {"path": os.path.join(tmp, "bench.sqlite")},
            "postgres": {"path": args.url, "options": {"schema": schemas["postgres"]}},
            "postgres, 1 counter row": {"path": args.url, "options": {
                "schema": schemas["postgres, 1 counter row"], "counter_slots": 1}},
        }
        names = list(targets)
        rows: list[tuple[str, int, int, list[float]]] = []
        try:
            for batch in [] if args.no_puts else args.batches:
                rates = [put_rate(targets[n], batch, args.seconds) for n in names]
                rows.append(("put", 1, batch, rates))
                print(f"put batch={batch}: {rates}", file=sys.stderr)
            for batch in args.batches:
                prefill = args.prefill or (8_000 if batch == 1 else 150_000)
                for consumers in args.consumers:
                    rates = [lease_rate(targets[n], consumers, batch, args.seconds, prefill)
                             for n in names]
                    rows.append(("lease+ack", consumers, batch, rates))
                    print(f"lease+ack consumers={consumers} batch={batch}: {rates}",
                          file=sys.stderr)
        finally:
            for schema in schemas.values():
                _drop_schema(args.url, schema)

    print(f"| workload | processes | batch | {' | '.join(names)} |")
    print(f"|---|--:|--:|{'--:|' * len(names)}")
    for workload, procs, batch, rates in rows:
        cells = " | ".join(f"{rate:,.0f}/s" for rate in rates)
        print(f"| {workload} | {procs} | {batch} | {cells} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        import ast

        consume(ast.literal_eval(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        main()
