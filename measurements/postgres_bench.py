"""PostgreSQL next to SQLite: puts/s and lease+ack/s through ``spoolq.SyncQueue``,
with 1, 4 and 16 processes, batches of 1 and 100, with and without work per job.

Run from the repository root (a PostgreSQL server must be reachable)::

    python measurements/postgres_bench.py --quick     # about a minute
    python measurements/postgres_bench.py             # 3 s cells, median of 3: ~8 minutes
    python measurements/postgres_bench.py --url postgresql://me@dbhost/bench

Every producer and consumer is a process of its own. They are started once,
before anything is timed, and each cell tells them what to open and run:

- ``put``: each producer puts ``ITEM`` (``put``, batch 1) or lists of them
  (``put_many``, batch 100) for the time of the cell.
- ``lease+ack``: each consumer leases (``lease_many(batch)``), works, and acks
  the batch in one call, for the time of the cell, from a queue filled
  beforehand. "work per job" is what a consumer does with each job: "none"
  measures the queue alone; "N ms sleep" sleeps N ms per job, one job after
  the other, standing for a job that waits on I/O (a web request, a write to
  another system). With work the consumers spend their time waiting, not on
  the CPU, so adding consumers adds throughput until the database (or, on a
  small machine that also runs the database, the CPU) is the limit.

A rate is the items of every process divided by the time from "go" to the
last process's last item. Each cell runs ``--repeat`` times, the engines
taking turns, and the table shows the median; "(3.9x)" is the ratio to one
process of the same engine, batch and work. The last column says where the
CPU went in the postgres cells (Linux only): cores kept busy by the producers
or consumers, by the PostgreSQL processes of this machine, and by the whole
machine, other programs included. Every engine runs with
``durability="commit"``; items are ~100-byte dicts. ``--engines`` adds
"postgres-1-counter" (``counter_slots=1``) and "postgres-no-notify"
(``notify=False``). Before each cell the PostgreSQL tables are vacuumed, as
autovacuum would have by then (a server with autovacuum off, like a test
server, would otherwise carry every dead row into the next cell). Only ratios
within one run mean much on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import IO, Any

import spoolq

ITEM = {"id": 1, "payload": "x" * 80}
ENGINES = ("sqlite", "postgres", "postgres-1-counter", "postgres-no-notify")
FILL_CHUNK = 1000

Cpu = tuple[float, float, float]  # cores kept busy: by the clients, the server, everything
Row = tuple[str, str, int, int]  # workload, work per job, processes, batch
Runs = dict[Row, dict[str, list[tuple[float, Cpu]]]]  # each run's rate and CPU by engine


# ---- the producer / consumer process ------------------------------------------------

def _open(target: dict[str, Any]) -> spoolq.SyncQueue[Any]:
    return spoolq.SyncQueue.create(target["path"], name=target["name"], poll_interval=0.05,
                                   engine_options=target.get("options"))


def _produce(q: spoolq.SyncQueue[Any], batch: int, until: float) -> tuple[int, float]:
    done, items = 0, [ITEM] * batch
    while (now := time.time()) < until:
        if batch == 1:
            q.put(ITEM)
        else:
            q.put_many(items)
        done += batch
    return done, now


def _consume(q: spoolq.SyncQueue[Any], batch: int, work_ms: float,
             until: float) -> tuple[int, float]:
    done, last = 0, time.time()
    while last < until:
        try:
            msgs = q.lease_many(batch, timeout=0.5, ttl=300)
        except spoolq.Empty:
            break
        for _ in msgs:
            if work_ms:
                time.sleep(work_ms / 1000)
        q.ack(*msgs)
        done += len(msgs)
        last = time.time()
    return done, last


def worker() -> None:
    """Run cells as told on stdin, one JSON line each: open the queue, say "ready",
    wait for "go <start time>", run until start + seconds, print count and end,
    and close the queue on "done"."""
    for line in sys.stdin:
        cell = json.loads(line)
        with _open(cell["target"]) as q:
            print("ready", flush=True)
            start = float(sys.stdin.readline().split()[1])
            until = start + cell["seconds"]
            if cell["kind"] == "put":
                done, end = _produce(q, cell["batch"], until)
            else:
                done, end = _consume(q, cell["batch"], cell["work_ms"], until)
            print(json.dumps([done, end]), flush=True)
            sys.stdin.readline()  # "done": the conductor has read the CPU times


# ---- the conductor ------------------------------------------------------------------

class Workers:
    """Processes started once; a cell runs on the first ``n`` of them."""

    def __init__(self, n: int) -> None:
        self.procs = [subprocess.Popen([sys.executable, __file__, "--worker"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True) for _ in range(n)]

    @staticmethod
    def _pipes(proc: subprocess.Popen[str]) -> tuple[IO[str], IO[str]]:
        if proc.stdin is None or proc.stdout is None:
            raise RuntimeError("a worker has no pipes")
        return proc.stdin, proc.stdout

    def run(self, n: int, cell: dict[str, Any]) -> tuple[float, Cpu]:
        """Run ``cell`` on ``n`` workers: the items per second of all of them, and the
        cores the workers and the database server kept busy meanwhile."""
        procs = self.procs[:n]
        self._tell(procs, json.dumps(cell))
        for proc in procs:
            if self._pipes(proc)[1].readline().strip() != "ready":
                raise RuntimeError(f"a worker failed to open {cell['target']['path']}")
        pids = [proc.pid for proc in procs]
        before = _cpu_times(pids), _cpu_times(_server_pids()), _machine_busy()
        start = time.time()
        self._tell(procs, f"go {start}")
        results = [json.loads(self._pipes(proc)[1].readline()) for proc in procs]
        wall = time.time() - start
        after = _cpu_times(pids), _cpu_times(_server_pids()), _machine_busy()
        self._tell(procs, "done")
        total = sum(done for done, _ in results)
        cpu = (_used(before[0], after[0]) / wall, _used(before[1], after[1]) / wall,
               (after[2] - before[2]) / wall)
        return total / max(max(end for _, end in results) - start, 1e-9), cpu

    def _tell(self, procs: list[subprocess.Popen[str]], line: str) -> None:
        for proc in procs:
            stdin, _ = self._pipes(proc)
            stdin.write(line + "\n")
            stdin.flush()

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _cpu_times(pids: list[int]) -> dict[int, float]:
    """User plus system CPU seconds of each of ``pids`` still running (Linux only)."""
    times = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        times[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return times


def _machine_busy() -> float:
    """CPU seconds the whole machine spent busy since boot (Linux; 0 elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(t) for t in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # up to steal; guests are in user


def _used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings; a process that started meanwhile counts whole,
    one that ended meanwhile is missed."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _server_pids() -> list[int]:
    """Every PostgreSQL process on this machine (none when the server is elsewhere)."""
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as comm:
                    if comm.read().strip() == "postgres":
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def _fill(target: dict[str, Any], want: int) -> None:
    """Top the queue up to ``want`` ready items."""
    with _open(target) as q:
        missing = want - q.qsize()
        for _ in range(0, max(missing, 0), FILL_CHUNK):
            q.put_many([ITEM] * FILL_CHUNK)


def _tidy(target: dict[str, Any]) -> None:
    """Do what autovacuum would have done by now (see the module docstring)."""
    if "options" not in target:
        return
    import psycopg
    from psycopg import sql

    with psycopg.connect(target["path"], autocommit=True) as conn:
        for table in ("records", "counts"):
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}.{}").format(
                sql.Identifier(target["options"]["schema"]), sql.Identifier(table)))


def _server(url: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('server_version'), "
                           "current_setting('autovacuum')").fetchone()
    return "unknown" if row is None else f"PostgreSQL {row[0]} (autovacuum {row[1]})"


def _drop_schema(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _targets(engines: list[str], url: str, tmp: str) -> dict[str, dict[str, Any]]:
    targets: dict[str, dict[str, Any]] = {}
    for engine in engines:
        if engine == "sqlite":
            targets[engine] = {"path": os.path.join(tmp, "bench.sqlite")}
        else:
            options: dict[str, Any] = {"schema": f"bench_{uuid.uuid4().hex[:8]}"}
            if engine == "postgres-1-counter":
                options["counter_slots"] = 1
            elif engine == "postgres-no-notify":
                options["notify"] = False
            targets[engine] = {"path": url, "options": options}
    return targets




def _row_label(work_ms: float) -> str:
    return "none" if not work_ms else f"{work_ms:g} ms sleep"


def _lease_fill(procs: int, batch: int, work_ms: float, seconds: float) -> int:
    """Items enough for one lease+ack cell: a generous guess of the rate times the time."""
    ceiling = 100_000 if batch > 1 else 10_000
    if work_ms:
        ceiling = min(ceiling, int(procs * 1000 / work_ms))
    return int(ceiling * seconds * 1.5) + procs * batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get(
        "SPOOLQ_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--quick", action="store_true",
                        help="1.5 s cells, one run each, no 16-process puts")
    parser.add_argument("--seconds", type=float, help="per cell (default 3, quick 1.5)")
    parser.add_argument("--repeat", type=int, help="runs per cell (default 3, quick 1)")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=["sqlite", "postgres"])
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--producers", type=int, nargs="+")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--work-ms", type=float, nargs="+", default=[0, 5],
                        help="sleep per job in the consumers; 0 = no work (default: 0 5)")
    parser.add_argument("--json", help="also write every run's rates to this file")
    args = parser.parse_args()
    seconds = args.seconds or (1.5 if args.quick else 3.0)
    repeat = args.repeat or (1 if args.quick else 3)
    producers = args.producers or ([1, 4] if args.quick else [1, 4, 16])

    cells: list[tuple[Row, dict[str, Any]]] = []
    for batch in args.batches:
        for n in producers:
            cells.append((("put", "-", n, batch), {"kind": "put", "batch": batch}))
    for work_ms in args.work_ms:
        for batch in args.batches:
            for n in args.consumers:
                cells.append((("lease+ack", _row_label(work_ms), n, batch),
                              {"kind": "lease", "batch": batch, "work_ms": work_ms}))

    print(f"{os.cpu_count()} cores; {_server(args.url)}; {seconds:g} s cells, "
          f"median of {repeat}", file=sys.stderr)
    workers = Workers(max(*args.consumers, *producers))
    runs: Runs = {}
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        targets = _targets(args.engines, args.url, tmp)
        try:
            for base in targets.values():  # creates the file or the schema
                _open({**base, "name": "put"}).close()
            for row, cell in cells:
                _workload, _work, n, batch = row
                for _ in range(repeat):
                    for engine, base in targets.items():
                        target = {**base, "name": cell["kind"]}
                        if cell["kind"] == "lease":
                            _fill(target, _lease_fill(n, batch, cell["work_ms"], seconds))
                        _tidy(target)
                        rate, cpu = workers.run(n, {**cell, "target": target,
                                                    "seconds": seconds})
                        with _open(target) as q:
                            if cell["kind"] == "put":
                                q.purge()
                            elif q.qsize() == 0:
                                print(f"  note: {engine} ran dry in {row}: the rate is low",
                                      file=sys.stderr)
                        runs.setdefault(row, {}).setdefault(engine, []).append((rate, cpu))
                print(f"{row}: " + ", ".join(
                    f"{e} {_median(r, 0):,.0f}/s (cores: {_median(r, 1):.1f} clients, "
                    f"{_median(r, 2):.1f} server, {_median(r, 3):.1f} machine)"
                    for e, r in runs[row].items()), file=sys.stderr)
        finally:
            workers.close()
            for target in targets.values():
                if "options" in target:
                    _drop_schema(args.url, target["options"]["schema"])
    print(f"took {time.monotonic() - began:.0f} s", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as out:
            json.dump([{"row": row, "runs": {e: [{"rate": rate, "client_cores": cpu[0],
                                                  "server_cores": cpu[1], "busy_cores": cpu[2]}
                                                 for rate, cpu in r]
                                              for e, r in engines.items()}}
                       for row, engines in runs.items()], out, indent=1)
    _table(runs, list(targets))


def _median(runs: list[tuple[float, Cpu]], field: int) -> float:
    """The median rate (field 0), or cores busy (1 clients, 2 server, 3 machine) of ``runs``."""
    return statistics.median(rate if field == 0 else cpu[field - 1] for rate, cpu in runs)


def _table(runs: Runs, engines: list[str]) -> None:
    """Print the Markdown table; the last column is the CPU of the postgres cells."""
    cpu_of = "postgres" if "postgres" in engines else None
    extra = f" {cpu_of} cells, cores busy: clients + server / machine |" if cpu_of else ""
    print(f"| workload | work per job | processes | batch | {' | '.join(engines)} |{extra}")
    print(f"|---|---|--:|--:|{'--:|' * len(engines)}{'--:|' if cpu_of else ''}")
    for row, by_engine in runs.items():
        workload, work, n, batch = row
        one = runs.get((workload, work, 1, batch), {})
        cells = []
        for engine in engines:
            rate = _median(by_engine[engine], 0)
            cell = f"{rate:,.0f}/s"
            if n > 1 and one.get(engine):
                cell += f" ({rate / _median(one[engine], 0):.1f}x)"
            cells.append(cell)
        if cpu_of:
            cpu = by_engine[cpu_of]
            cells.append(f"{_median(cpu, 1):.1f} + {_median(cpu, 2):.1f} / {_median(cpu, 3):.1f}")
        print(f"| {workload} | {work} | {n} | {batch} | {' | '.join(cells)} |")


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    else:
        main()
