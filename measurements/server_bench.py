"""Throughput of the spoolq server on loopback, compared with Redis in the same run.

    PYTHONPATH=src python measurements/server_bench.py [--seconds 2] [--clients 16]

Starts its own ``python -m spoolq.server`` processes (memory engine, and SQLite
with durability "commit") and its own ``redis-server`` (``--appendonly yes
--save ""`` in a temporary folder) on free ports of 127.0.0.1, runs each
scenario for a fixed time with 100-byte items, stops every server by its pid
and prints a table with ratios:

- sequential: one client, ``put`` then ``get`` one item at a time (Redis:
  LPUSH then RPOP through redis-py); two round trips per item;
- batched: one client, ``put_many`` of 100 then ``get_many(100)`` (Redis: a
  pipeline of 100 LPUSH then one of 100 RPOP);
- N clients: N processes each doing the sequential loop at once.

spoolq numbers are through ``spoolq.SyncQueue`` (serializing and framing on
the client, as an application would) and, to show what the server itself
does, through the raw remote engine (records already encoded).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

ITEM = b"x" * 100
BATCH = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_spoolq(path: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "spoolq.server", path, "--port", "0",
                             "--log-level", "WARNING"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        proc.wait()
        raise SystemExit(f"the spoolq server did not start: {line!r}")
    return proc, line.split()[-1]


def start_redis(folder: str) -> tuple[subprocess.Popen[bytes], int] | None:
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--appendonly",
                             "yes", "--save", "", "--dir", folder],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port).ping()
            return proc, port
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                return None
            time.sleep(0.05)


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# ---- one client's loops: each returns items moved (put and got) in `seconds` -------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux); 0.0 where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_for(seconds: float, step: Callable[[], int]) -> float:
    step()  # warm up
    done, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        done += step()
    return done / (time.perf_counter() - start)


def spoolq_client(url: str, mode: str, seconds: float) -> float:
    import spoolq
    name = f"bench-{os.getpid()}"
    with spoolq.SyncQueue.create(f"{url}/{name}", name=name) as q:
        def seq() -> int:
            q.put(ITEM)
            q.get()
            return 1

        def batched() -> int:
            q.put_many([ITEM] * BATCH)
            q.get_many(BATCH)
            return BATCH

        return run_for(seconds, seq if mode == "seq" else batched)


def engine_client(url: str, mode: str, seconds: float) -> float:
    from spoolq.engines.remote import RemoteEngine
    eng = RemoteEngine(url)
    name = f"raw-{os.getpid()}"
    n = 1 if mode == "seq" else BATCH
    records, sizes = [ITEM] * n, [len(ITEM)] * n

    def step() -> int:
        eng.append(name, records, sizes, 0.0)
        eng.take(name, n, 0.0, None)
        return n

    try:
        return run_for(seconds, step)
    finally:
        eng.close()


def redis_client(port: int, mode: str, seconds: float) -> float:
    import redis
    r = redis.Redis(port=port)
    key = f"bench-{os.getpid()}"

    def seq() -> int:
        r.lpush(key, ITEM)
        r.rpop(key)
        return 1

    def batched() -> int:
        with r.pipeline(transaction=False) as p:
            for _ in range(BATCH):
                p.lpush(key, ITEM)
            p.execute()
        with r.pipeline(transaction=False) as p:
            for _ in range(BATCH):
                p.rpop(key)
            p.execute()
        return BATCH

    try:
        return run_for(seconds, seq if mode == "seq" else batched)
    finally:
        r.close()


def _worker(kind: str, target: Any, seconds: float, barrier: Barrier,
            out: mp.SimpleQueue[float]) -> None:
    barrier.wait()
    fn = {"spoolq": spoolq_client, "engine": engine_client, "redis": redis_client}[kind]
    out.put(fn(target, "seq", seconds))


def many_clients(kind: str, target: Any, n: int, seconds: float) -> float:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(n)
    out: mp.SimpleQueue[float] = ctx.SimpleQueue()
    procs = [ctx.Process(target=_worker, args=(kind, target, seconds, barrier, out))
             for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(seconds * 10 + 60)
    rates = [out.get() for _ in procs if not out.empty()]
    out.close()
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per scenario")
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    sec, n = args.seconds, args.clients
    folder = tempfile.mkdtemp(prefix="spoolq-bench-")
    results: dict[str, dict[str, float]] = {}
    cpu: dict[str, dict[str, float]] = defaultdict(dict)
    servers: list[subprocess.Popen[Any]] = []
    try:
        mem, mem_url = start_spoolq(":memory:")
        servers.append(mem)
        sql, sql_url = start_spoolq(str(Path(folder) / "bench.sqlite"))
        servers.append(sql)
        red = start_redis(folder)
        if red is not None:
            servers.append(red[0])
        scenarios = [("sequential, 1 client", "seq", 1), (f"batched x{BATCH}, 1 client",
                                                          "batch", 1),
                     (f"sequential, {n} clients", "seq", n)]
        pids = {"spoolq memory": mem.pid, "spoolq sqlite": sql.pid, "engine memory": mem.pid,
                "engine sqlite": sql.pid, "redis": None if red is None else red[0].pid}
        for label, mode, clients in scenarios:
            row: dict[str, float] = {}
            for col, kind, target in (("spoolq memory", "spoolq", mem_url),
                                      ("spoolq sqlite", "spoolq", sql_url),
                                      ("engine memory", "engine", mem_url),
                                      ("engine sqlite", "engine", sql_url),
                                      ("redis", "redis", None if red is None else red[1])):
                if target is None:
                    continue
                pid = pids[col]
                cpu0, wall0 = cpu_seconds(pid) if pid else 0.0, time.perf_counter()
                if clients == 1:
                    fn = {"spoolq": spoolq_client, "engine": engine_client,
                          "redis": redis_client}[kind]
                    row[col] = fn(target, mode, sec)  # type: ignore[operator]
                else:
                    row[col] = many_clients(kind, target, clients, sec)
                items = row[col] * (time.perf_counter() - wall0)
                if pid and items:
                    cpu[label][col] = (cpu_seconds(pid) - cpu0) / items * 1e6
                sys.stderr.write(f"{label:28} {col:14} {row[col]:>10,.0f} items/s\n")
            results[label] = row
    finally:
        for proc in servers:
            stop(proc)
        shutil.rmtree(folder, ignore_errors=True)
    print_table(results, cpu)


def print_table(results: dict[str, dict[str, float]],
                cpu: dict[str, dict[str, float]]) -> None:
    cols = ["spoolq memory", "spoolq sqlite", "engine memory", "engine sqlite", "redis"]
    head = f"{'items/s (put+get each)':28}" + "".join(f"{c:>15}" for c in cols)
    has_redis = all("redis" in row for row in results.values())
    if has_redis:
        head += f"{'mem/redis':>11}{'sqlite/redis':>14}"
    print(head)
    print("-" * len(head))
    for label, row in results.items():
        line = f"{label:28}" + "".join(
            f"{row[c]:>15,.0f}" if c in row else f"{'-':>15}" for c in cols)
        if has_redis:
            line += f"{row['spoolq memory'] / row['redis']:>11.2f}"
            line += f"{row['spoolq sqlite'] / row['redis']:>14.2f}"
        print(line)
    print()
    head = f"{'server CPU us per item':28}" + "".join(f"{c:>15}" for c in cols)
    print(head)
    print("-" * len(head))
    for label in results:
        print(f"{label:28}" + "".join(
            f"{cpu[label][c]:>15.1f}" if c in cpu[label] else f"{'-':>15}" for c in cols))
    print("\nAn item counts once when it has been put and got back; 'spoolq' columns go"
          "\nthrough SyncQueue (client-side encoding), 'engine' columns send raw records."
          "\nServer CPU is the server process's user+system time (both of its threads;"
          "\nthe setup of a scenario's client processes is included in its wall time).")


if __name__ == "__main__":
    main()
