"""SIGKILL at every kind of step of the dbm and pickle engines' writes: a child process
runs a seeded workload of appends, takes, leases, acks, nacks, reopens and (with the
dbm engine's thresholds lowered) compactions, and kills itself just before the K-th
file operation (a dbm.dumb value or index line written, a rename, a replace, an unlink,
an fsync, a line of an index rewritten at close). Reopened, the queue holds exactly
what the child confirmed, give or take the one call it was in, whole or not at all,
with no record twice and counts that match."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spoolq.engines.dbm import DBMEngine
from spoolq.engines.pickle import PickleEngine

CHILD = textwrap.dedent("""
    import io, os, random, signal, sys, time
    import dbm.dumb
    from spoolq.engines import _dbmgenerations
    from spoolq.engines.base import Lease
    from spoolq.engines.dbm import DBMEngine
    from spoolq.engines.pickle import PickleEngine

    engine, path, log, seed, kill_at = sys.argv[1:6]
    kill_at = int(kill_at)
    _dbmgenerations._COMPACT_MIN = 4
    _dbmgenerations._COMPACT_MIN_BYTES = 3000
    events = 0
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def say(*parts):
        os.write(fd, (" ".join(map(str, parts)) + "\\n").encode())

    def step():
        global events
        events += 1
        if events == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def counted(fn):
        def wrapper(*args, **kwargs):
            step()
            return fn(*args, **kwargs)
        return wrapper

    for name in ("rename", "replace", "unlink", "fsync"):
        setattr(os, name, counted(getattr(os, name)))
    dbm.dumb._Database._addval = counted(dbm.dumb._Database._addval)
    dbm.dumb._Database._addkey = counted(dbm.dumb._Database._addkey)

    class _Counting:
        def __init__(self, f):
            self._f = f
        def write(self, data):
            step()
            return self._f.write(data)
        def __getattr__(self, name):
            return getattr(self._f, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

    class _IO:
        def __getattr__(self, name):
            return getattr(io, name)
        def open(self, *args, **kwargs):
            f = io.open(*args, **kwargs)
            mode = args[1] if len(args) > 1 else kwargs.get("mode", "r")
            return _Counting(f) if "w" in mode else f

    dbm.dumb._io = _IO()

    def make():
        return DBMEngine(path) if engine == "dbm" else PickleEngine(path)

    rng = random.Random(int(seed))
    e = make()
    held = []
    n = 0
    for _ in range(int(sys.argv[6])):
        op = rng.choice("ppptlanr" if held else "ppptlr")
        if op == "p":
            batch = [f"i{n + k}" for k in range(rng.randint(1, 4))]
            n += len(batch)
            say("p+", *batch)
            e.append("q", [b.encode() for b in batch], [2] * len(batch), time.time())
            say("p")
        elif op == "t":
            say("t+")
            got = e.take("q", rng.randint(1, 3), time.time(), None)
            say("t", *[r.data.decode() for r in got])
        elif op == "l":
            say("l+")
            got = e.take("q", rng.randint(1, 3), time.time(), Lease("child", time.time() + 600))
            held += got
            say("l", *[r.data.decode() for r in got])
        elif op in "an":
            rng.shuffle(held)
            chosen, held[:] = held[:2], held[2:]
            names = [r.data.decode() for r in chosen]
            deliveries = [(r.id, r.attempts) for r in chosen]
            say(op + "+", *names)
            if op == "a":
                e.ack("q", deliveries, "child")
            else:
                e.release("q", deliveries, "child", not_before=0.0, max_attempts=None)
            say(op, *names)
        else:
            say("r+")
            e.close()
            e = make()
            say("r")
    say("end", events)
    os.kill(os.getpid(), signal.SIGKILL)
""")

OPS = 70


def _run(engine: str, path: Path, log: Path, seed: int, kill_at: int) -> None:
    """Run the workload until it kills itself (at step ``kill_at``, or at its end)."""
    proc = subprocess.run([sys.executable, "-c", CHILD, engine, str(path), str(log), str(seed),
                           str(kill_at), str(OPS)],
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]


def _expected(log: Path) -> tuple[set[str], set[str], list[str] | None, str | None]:
    """What the queue must hold (ready or leased), what it may hold (the open call's),
    and the open call."""
    must: set[str] = set()
    gone: set[str] = set()
    pending: list[str] | None = None
    op = None
    for line in log.read_text().splitlines():
        word, *names = line.split()
        if word.endswith("+"):
            op, pending = word[:-1], names
            continue
        if word == "p":
            must |= set(pending or ())
        elif word in ("t", "a"):
            must -= set(names)
            gone |= set(names)
        op, pending = None, None
    return must, gone, pending, op


def _check(engine: str, path: Path, log: Path, where: str) -> None:
    must, gone, pending, op = _expected(log)
    e = DBMEngine(path) if engine == "dbm" else PickleEngine(path)
    try:
        e.expire("q", time.time(), owners=["child"])
        counts = e.counts("q")
        assert counts.leased == 0, where
        held = [r.data.decode() for r in e.peek("q", 10_000)]
        assert len(held) == len(set(held)) == counts.ready, (where, held, counts)
        got = set(held)
        assert not got & gone, (where, "delivered and removed, yet still held", got & gone)
        extra, missing = got - must, must - got
        if op == "p":
            assert extra in (set(), set(pending or ())), (where, extra, pending)
            assert not missing, (where, missing)
        elif op in ("t", "a"):
            assert not extra, (where, extra)
            # a take removes at most what it asked for; an ack its own records, whole or
            # not at all
            assert len(missing) <= 3, (where, missing)
            if op == "a":
                assert missing in (set(), set(pending or ())), (where, missing, pending)
        else:
            assert not extra and not missing, (where, op, extra, missing)
        taken = e.take("q", 10_000, time.time(), None)
        assert [r.data.decode() for r in taken] == held, where
    finally:
        e.close()


def _events(engine: str, tmp: Path, seed: int) -> int:
    """How many counted steps the workload takes with no kill."""
    log = tmp / "count.log"
    _run(engine, tmp / f"count.{engine}", log, seed, 0)
    last = log.read_text().splitlines()[-1].split()
    assert last[0] == "end", last
    return int(last[1])


KILLS = 15


@pytest.mark.parametrize(("engine", "seed"), [("dbm", 1), ("dbm", 2), ("pickle", 1)])
def test_killed_before_any_file_step(tmp_path: Path, engine: str, seed: int) -> None:
    total = _events(engine, tmp_path, seed)
    assert total > 50
    # Points spread over the run, a different spread for each seed: a process started
    # for each one bounds their count.
    points = sorted({max(1, math.floor(total * (i + seed / 3) / KILLS))
                     for i in range(KILLS)})
    for kill_at in points:
        path, log = tmp_path / f"q{kill_at}.{engine}", tmp_path / f"k{kill_at}.log"
        _run(engine, path, log, seed, kill_at)
        if not path.exists():
            continue  # killed while the queue was first made
        _check(engine, path, log, f"{engine} seed {seed} killed at step {kill_at} of {total}")
