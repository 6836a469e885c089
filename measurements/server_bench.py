"""Throughput of the spoolq server on loopback, compared with Redis and StiQueue in the same run.

    PYTHONPATH=src python measurements/server_bench.py [--seconds 2] [--repeat 3] [--clients 16]

Starts its own ``python -m spoolq.server`` processes (memory engine, and SQLite
with durability "commit", on uvloop when it is installed; and a memory one on
asyncio's own event loop, the "mem asyncio" column), its own ``redis-server`` (``--appendonly yes
--save ""`` in a temporary folder) and its own StiQueue server (``python -m
stiqueue.sqserver``, in memory) on free ports of 127.0.0.1, runs each
scenario for a fixed time with 100-byte items, stops every server by its pid
and prints a table with ratios:

- sequential: one client, ``put`` then ``get`` one item at a time (Redis:
  LPUSH then RPOP through redis-py; StiQueue: ``enq`` then ``deq``, a
  connection each); two round trips per item;
- batched: one client, ``put_many`` of 100 then ``get_many(100)`` (Redis: a
  pipeline of 100 LPUSH then one of 100 RPOP; StiQueue has no batches);
- N clients: N processes each doing the sequential loop at once.

spoolq numbers are through ``spoolq.SyncQueue`` (serializing and framing on
the client, as an application would) and, to show what the server itself
does, through the raw remote engine (records already encoded). Each figure is
the median of ``--repeat`` runs, the contestants taking turns, so that a
machine shared with other work skews them all alike; only the ratios of one
run mean much. Redis (``pip install redis`` and a ``redis-server`` binary) and
StiQueue (``pip install stiqueue``) are skipped when missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
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


def start_spoolq(path: str, loop: str = "auto") -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "spoolq.server", path, "--port", "0",
                             "--log-level", "WARNING", "--loop", loop],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        proc.wait()
        raise SystemExit(f"the spoolq server did not start: {line!r}")
    return proc, line.split()[-1]


def start_redis(folder: str) -> tuple[subprocess.Popen[bytes], int] | None:
    exe = shutil.which("redis-server")
    if exe is None or importlib.util.find_spec("redis") is None:
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


def start_stiqueue() -> tuple[subprocess.Popen[bytes], int] | None:
    if importlib.util.find_spec("stiqueue") is None:
        return None
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stiqueue.sqserver", "--host", "127.0.0.1",
                             "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()  # an empty request
            return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                stop(proc)
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


def stiqueue_client(port: int, mode: str, seconds: float) -> float:
    from stiqueue.sqclient import SQClient  # type: ignore[import-untyped]
    quiet = logging.getLogger("server_bench.stiqueue")  # its default logger prints every call
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    client = SQClient(host="127.0.0.1", port=port, logger=quiet)

    def seq() -> int:
        client.enq(ITEM)
        client.deq()
        return 1

    return run_for(seconds, seq)


CLIENTS: dict[str, Callable[[Any, str, float], float]] = {
    "spoolq": spoolq_client, "engine": engine_client, "redis": redis_client,
    "stiqueue": stiqueue_client}


def _worker(kind: str, target: Any, seconds: float, barrier: Barrier,
            out: mp.SimpleQueue[float]) -> None:
    barrier.wait()
    out.put(CLIENTS[kind](target, "seq", seconds))


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


COLUMNS = ["spoolq memory", "spoolq sqlite", "engine memory", "engine sqlite", "mem asyncio",
           "redis", "stiqueue"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per scenario and run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (the median)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="event loop of the spoolq servers (auto: uvloop if installed); "
                             "the 'mem asyncio' column always runs on asyncio's own")
    args = parser.parse_args()
    sec, n = args.seconds, args.clients
    folder = tempfile.mkdtemp(prefix="spoolq-bench-")
    runs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    cpu: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    servers: list[subprocess.Popen[Any]] = []
    try:
        mem, mem_url = start_spoolq(":memory:", args.loop)
        servers.append(mem)
        sql, sql_url = start_spoolq(str(Path(folder) / "bench.sqlite"), args.loop)
        servers.append(sql)
        aio, aio_url = start_spoolq(":memory:", "asyncio")
        servers.append(aio)
        red = start_redis(folder)
        if red is not None:
            servers.append(red[0])
        sti = start_stiqueue()
        if sti is not None:
            servers.append(sti[0])
        contestants: list[tuple[str, str, Any, int]] = [
            ("spoolq memory", "spoolq", mem_url, mem.pid),
            ("spoolq sqlite", "spoolq", sql_url, sql.pid),
            ("engine memory", "engine", mem_url, mem.pid),
            ("engine sqlite", "engine", sql_url, sql.pid),
            ("mem asyncio", "spoolq", aio_url, aio.pid)]
        if red is not None:
            contestants.append(("redis", "redis", red[1], red[0].pid))
        if sti is not None:
            contestants.append(("stiqueue", "stiqueue", sti[1], sti[0].pid))
        scenarios = [("sequential, 1 client", "seq", 1),
                     (f"batched x{BATCH}, 1 client", "batch", 1),
                     (f"sequential, {n} clients", "seq", n)]
        for run in range(args.repeat):
            for label, mode, clients in scenarios:
                for col, kind, target, pid in contestants:
                    if kind == "stiqueue" and mode == "batch":
                        continue  # StiQueue has no batch operations
                    cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
                    if clients == 1:
                        rate = CLIENTS[kind](target, mode, sec)
                    else:
                        rate = many_clients(kind, target, clients, sec)
                    items = rate * (time.perf_counter() - wall0)
                    runs[label][col].append(rate)
                    if items:
                        cpu[label][col].append((cpu_seconds(pid) - cpu0) / items * 1e6)
                    sys.stderr.write(f"run {run + 1}/{args.repeat} {label:24} {col:14} "
                                     f"{rate:>10,.0f} items/s\n")
    finally:
        for proc in servers:
            stop(proc)
        shutil.rmtree(folder, ignore_errors=True)
    results = {label: {col: statistics.median(v) for col, v in row.items()}
               for label, row in runs.items()}
    cpu_med = {label: {col: statistics.median(v) for col, v in row.items()}
               for label, row in cpu.items()}
    print_table(results, cpu_med, args)


def _loop_used(loop: str) -> str:
    if loop == "auto":
        return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return loop


def _ratio(top: float | None, bottom: float | None) -> str:
    return f"{top / bottom:.2f}" if top is not None and bottom else "-"


def print_table(results: dict[str, dict[str, float]], cpu: dict[str, dict[str, float]],
                args: argparse.Namespace) -> None:
    cols = [c for c in COLUMNS if any(c in row for row in results.values())]
    ratios = [("mem/redis", "spoolq memory", "redis"), ("sqlite/redis", "spoolq sqlite", "redis"),
              ("mem/stiqueue", "spoolq memory", "stiqueue"),
              ("mem/asyncio", "spoolq memory", "mem asyncio")]
    ratios = [r for r in ratios if r[2] in cols]
    print(f"spoolq server on loopback ({_loop_used(args.loop)} event loop), 100-byte items; "
          f"medians of {args.repeat} runs of {args.seconds:g} s each\n")
    head = f"{'items/s (put+get each)':26}" + "".join(f"{c:>14}" for c in cols) + "".join(
        f"{r[0]:>14}" for r in ratios)
    print(head)
    print("-" * len(head))
    for label, row in results.items():
        print(f"{label:26}" + "".join(f"{row[c]:>14,.0f}" if c in row else f"{'-':>14}"
                                      for c in cols)
              + "".join(f"{_ratio(row.get(a), row.get(b)):>14}" for _, a, b in ratios))
    labels = list(results)
    if len(labels) == 3:
        one, many = results[labels[0]], results[labels[2]]
        print(f"{f'{args.clients} clients / 1 client':26}"
              + "".join(f"{_ratio(many.get(c), one.get(c)):>14}" for c in cols))
    print()
    head = f"{'server CPU us per item':26}" + "".join(f"{c:>14}" for c in cols)
    print(head)
    print("-" * len(head))
    for label in results:
        print(f"{label:26}" + "".join(
            f"{cpu[label][c]:>14.1f}" if c in cpu[label] else f"{'-':>14}" for c in cols))
    print("\nAn item counts once when it has been put and got back; 'spoolq' columns go"
          "\nthrough SyncQueue (client-side encoding), 'engine' columns send raw records."
          "\nServer CPU is the server process's user+system time (all of its threads;"
          "\nthe setup of a scenario's client processes is included in its wall time).")


if __name__ == "__main__":
    main()
