"""The LMDB engine's lease bookkeeping (each owner's count in lease_owners, each queue's
earliest lease end) and the memory engine's (its holders and soonest) checked against the
leased records themselves, read through peek_leased, after random changes of every kind:
leases, acks, releases with and without counting the attempt and with a delay, expiry by
time and by owner (into the dead letters too), moves, dead letters moved back, restores,
purges and reopens; and on LMDB after several processes changed one file while some of
them were killed with SIGKILL."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from spoolq.engines import Engine, Lease, LMDBEngine, MemoryEngine
from spoolq.engines.base import StoredRecord

_OWNERS = ["a", "b", "ünï", "o" * 448, ""]
_ENDS = [-math.inf, -5.0, -0.0, 0.0, 1.0, 2.5, 10.0, 1e300, math.inf]
_QUEUES = ["q", "r", "q.dead"]
_ALL = 1 << 20


def _check(eng: Engine, queue: str, where: object) -> None:
    """owners() and counts() of ``queue`` as its records say."""
    leased = eng.peek_leased(queue, _ALL)  # type: ignore[attr-defined]
    assert eng.owners(queue) == dict(Counter(lr.owner for lr in leased)), where
    counts = eng.counts(queue)
    ready = eng.peek(queue, _ALL)
    assert (counts.ready, counts.leased) == (len(ready), len(leased)), where
    assert counts.stored_bytes == sum(len(r.data) for r in ready) + sum(
        len(lr.record.data) for lr in leased), where


def _expire_as_the_records_say(eng: Engine, rng: random.Random, queue: str,
                               where: object) -> None:
    if rng.random() < 0.5:
        now, gone = rng.choice([*_ENDS, 3.0, 20.0]), []
    else:
        now, gone = rng.choice([-math.inf, 0.0, 3.0]), rng.sample([*_OWNERS, "nobody"], 2)
    leased = eng.peek_leased(queue, _ALL)  # type: ignore[attr-defined]
    due = sum(1 for lr in leased if lr.until <= now or lr.owner in gone)
    assert eng.expire(queue, now, owners=gone, max_attempts=rng.choice([None, 3])) == due, (
        where, now, gone, [(lr.owner, lr.until) for lr in leased])


def _settle(eng: Engine, rng: random.Random, queue: str, op: str, where: object) -> None:
    leased = eng.peek_leased(queue, _ALL)  # type: ignore[attr-defined]
    if not leased:
        return
    picked = rng.sample(leased, min(len(leased), rng.randint(1, 4)))
    owner = picked[0].owner if rng.random() < 0.8 else rng.choice(_OWNERS)
    deliveries = [(lr.record.id, lr.record.attempts + (rng.random() < 0.1)) for lr in picked]
    expected = sorted({ident for (ident, attempts), lr in zip(deliveries, picked, strict=True)
                       if lr.owner == owner and attempts == lr.record.attempts})
    if rng.random() < 0.2:
        deliveries += deliveries  # each is settled once
    if op == "ack":
        got = eng.ack(queue, deliveries, owner)
    else:
        got = eng.release(queue, deliveries, owner, not_before=rng.choice([0.0, 5.0, 15.0]),
                          max_attempts=rng.choice([None, 2, 3]),
                          count_attempt=rng.random() < 0.6, reason=rng.choice(["", "why"]))
    assert sorted(got) == expected, where


def _run(rng: random.Random, opener: Callable[[], Engine], steps: int) -> None:
    eng = opener()
    taken: dict[str, list[StoredRecord]] = {q: [] for q in _QUEUES}
    try:
        for step in range(steps):
            queue = rng.choice(_QUEUES)
            op = rng.choice(["put", "put", "lease", "lease", "lease", "get", "ack", "release",
                             "release", "expire", "expire", "move", "restore", "requeue",
                             "purge", "reopen"])
            where = (step, op, queue)
            if op == "put":
                n = rng.randint(1, 4)
                eng.append(queue, [b"x" * rng.randint(0, 3)] * n, [1] * n, 0.0)
            elif op == "lease":
                eng.take(queue, rng.randint(1, 5), rng.choice([0.0, 3.0, 20.0]),
                         Lease(rng.choice(_OWNERS), rng.choice(_ENDS)))
            elif op == "get":
                taken[queue] += eng.take(queue, rng.randint(1, 3), rng.choice([0.0, 20.0]),
                                         None)
            elif op in ("ack", "release"):
                _settle(eng, rng, queue, op, where)
            elif op == "expire":
                _expire_as_the_records_say(eng, rng, queue, where)
            elif op == "move":
                ready = eng.peek(queue, 1000)
                ids = None if rng.random() < 0.3 or not ready else [
                    r.id for r in rng.sample(ready, min(len(ready), 3))]
                eng.move(queue, rng.choice(_QUEUES), ids)
            elif op == "restore" and taken[queue]:
                back = taken[queue][:rng.randint(1, len(taken[queue]))]
                del taken[queue][:len(back)]
                eng.restore(queue, back)
            elif op == "requeue":
                eng.move(queue.removesuffix(".dead") + ".dead", queue.removesuffix(".dead"))
            elif op == "purge" and rng.random() < 0.3:
                eng.purge(queue)
                taken[queue].clear()
            elif op == "reopen" and not isinstance(eng, MemoryEngine):
                eng.close()
                eng = opener()
            for name in _QUEUES:
                _check(eng, name, where)
    finally:
        eng.close()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", ["lmdb", "memory"])
def test_owners_counts_and_expire_agree_with_the_leased_records(
        tmp_path: Path, kind: str, seed: int) -> None:
    path = tmp_path / "q.lmdb"
    opener: Callable[[], Engine] = MemoryEngine if kind == "memory" else \
        lambda: LMDBEngine(path)
    _run(random.Random(seed), opener, 300)


_WORKER = textwrap.dedent("""
    import os, random, sys, time
    from spoolq.engines import Lease, LMDBEngine
    path, seed = sys.argv[1], int(sys.argv[2])
    rng, me = random.Random(seed), f"w{seed}"
    eng = LMDBEngine(path, map_size=32768)  # grown by every process in turn
    mine = []
    for step in range(100_000):
        queue, op, now = rng.choice(["q", "r"]), rng.random(), time.time()
        if op < 0.3:
            n = rng.randint(1, 30)
            eng.append(queue, [os.urandom(rng.randint(0, 300)) for _ in range(n)], [1] * n,
                       now)
        elif op < 0.55:
            until = now + rng.choice([-1.0, 0.01, 0.5, 100.0])
            mine += [(queue, r.id, r.attempts)
                     for r in eng.take(queue, rng.randint(1, 10), now, Lease(me, until))]
        elif op < 0.85 and mine:
            rng.shuffle(mine)
            part, mine = mine[:5], mine[5:]
            for q in ("q", "r"):
                deliveries = [(i, a) for (name, i, a) in part if name == q]
                if op < 0.7:
                    eng.ack(q, deliveries, me)
                else:
                    eng.release(q, deliveries, me, not_before=rng.choice([0.0, now + 0.2]),
                                max_attempts=rng.choice([None, 3]),
                                count_attempt=rng.random() < 0.5)
        elif op < 0.95:
            gone = [f"w{rng.randrange(6)}"] if rng.random() < 0.2 else []
            eng.expire(queue, now, owners=gone, max_attempts=rng.choice([None, 4]))
        else:
            eng.move(queue + ".dead", queue)
        print(step, flush=True)
""")


def test_processes_sharing_a_file_and_killed_mid_write_leave_the_counts_true(
        tmp_path: Path) -> None:
    path = tmp_path / "q.lmdb"
    LMDBEngine(path, map_size=32768).close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def start(seed: int) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", _WORKER, str(path), str(seed)],
                                stdout=subprocess.PIPE, text=True, env=env)

    def stop(proc: subprocess.Popen[str]) -> None:
        proc.kill()  # SIGKILL, in whatever write it is making
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()

    def run_for(proc: subprocess.Popen[str], steps: int) -> None:
        assert proc.stdout is not None
        for _ in range(steps):  # the worker reports each step it made
            assert proc.stdout.readline(), "the worker ended early"

    workers = [start(seed) for seed in range(3)]
    try:
        for round_ in range(3):  # one worker is killed in the middle of its work each round
            for proc in workers:
                run_for(proc, 150)
            stop(workers[round_])
            workers[round_] = start(3 + round_)
        for proc in workers:
            run_for(proc, 150)
    finally:
        for proc in workers:
            if proc.stdout is not None and not proc.stdout.closed:
                stop(proc)

    eng = LMDBEngine(path)
    try:
        for queue in eng.queues():
            _check(eng, queue, queue)
            # Every lease comes back when its end comes, at no time before (the queue's
            # earliest lease end must be no later than the records'), and only then.
            for end in sorted({lr.until for lr in eng.peek_leased(queue, _ALL)}):
                due = sum(1 for lr in eng.peek_leased(queue, _ALL) if lr.until <= end)
                assert eng.expire(queue, end) == due, (queue, end)
                _check(eng, queue, (queue, end))
            assert eng.counts(queue).leased == 0
    finally:
        eng.close()
