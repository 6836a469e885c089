"""Random sequences of engine calls (puts, takes, leases, acks, releases with and without
a delay, counted or not, expires by time and by owner, dead letters, moves, purges,
restores), on two handles of one SQLite file reopened now and then, compared after
every call with the memory engine, the reference: the same records in the same order
with the same attempts, reasons and leases, the same counts and owners, and pages of
any size reading the same as one peek.

Record ids differ (the memory engine numbers records across queues), so each record's
data is unique and names it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from spoolq.engines import Lease, MemoryEngine, SQLiteEngine

QUEUES = ["a", "b", "a.dead"]
OWNERS = ["o1", "o2", "o3"]
ALL = 10**6


def _id_of(engine: Any, queue: str, data: bytes) -> int | None:
    for rec in engine.peek(queue, ALL):
        if rec.data == data:
            return int(rec.id)
    for leased in engine.peek_leased(queue, ALL):
        if leased.record.data == data:
            return int(leased.record.id)
    return None


def _ready(engine: Any, queue: str) -> list[tuple[Any, ...]]:
    return [(r.data, *r[2:]) for r in engine.peek(queue, ALL)]


def _leased(engine: Any, queue: str) -> list[tuple[Any, ...]]:
    return [(r.record.data, *r.record[2:], r.owner, r.until)
            for r in engine.peek_leased(queue, ALL)]


def _paged(engine: SQLiteEngine, queue: str, size: int, leased: bool) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    while True:
        if leased:
            page: list[tuple[Any, ...]] = [(r.record.data, *r.record[2:], r.owner, r.until)
                                           for r in engine.peek_leased(queue, size, len(out))]
        else:
            page = [(r.data, *r[2:]) for r in engine.peek(queue, size, len(out))]
        if not page:
            return out
        out += page


class Run:
    """One seeded sequence of calls on the SQLite handles and the memory engine."""

    def __init__(self, path: Path, seed: int) -> None:
        self.rnd, self.path, self.seed = random.Random(seed), path, seed
        self.handles = [SQLiteEngine(path), SQLiteEngine(path)]
        self.mem = MemoryEngine()
        self.made, self.now = 0, 100.0
        self.held: list[tuple[str, bytes, int, str]] = []  # queue, data, attempts, owner
        self.taken: list[tuple[str, Any, Any]] = []  # queue, sqlite record, memory record

    def fresh(self, n: int) -> list[bytes]:
        self.made += n
        return [f"r{k}".encode() for k in range(self.made - n, self.made)]

    def put(self, eng: SQLiteEngine, q: str, n: int) -> None:
        data = self.fresh(n)
        eng.append(q, data, [len(d) for d in data], self.now)
        self.mem.append(q, data, [len(d) for d in data], self.now)

    def take(self, eng: SQLiteEngine, q: str, lease: Lease | None, where: object) -> None:
        n = self.rnd.randint(1, 5)
        got, want = eng.take(q, n, self.now, lease), self.mem.take(q, n, self.now, lease)
        assert [(r.data, *r[2:]) for r in got] == [(r.data, *r[2:]) for r in want], where
        if lease is None:
            self.taken += [(q, x, y) for x, y in zip(got, want, strict=True)]
        else:
            self.held += [(q, r.data, r.attempts, lease.owner) for r in got]

    def settle(self, eng: SQLiteEngine, op: str, where: object) -> None:
        rnd, mem = self.rnd, self.mem
        picked = rnd.sample(self.held, rnd.randint(1, min(3, len(self.held))))
        q = picked[0][0]
        owner = picked[0][3] if rnd.random() < 0.9 else rnd.choice(OWNERS)
        pairs = []
        for _q, data, attempts, _o in picked:
            ids = (_id_of(eng, q, data), _id_of(mem, q, data))
            if _q == q and ids != (None, None):
                pairs.append(((ids[0], attempts), (ids[1], attempts)))
        pairs.sort()  # in FIFO order: the memory engine buries in the order given
        mine, its = [p[0] for p in pairs], [p[1] for p in pairs]
        if op == "ack":
            assert len(eng.ack(q, mine, owner)) == len(mem.ack(q, its, owner)), where
            return
        kwargs: dict[str, Any] = {
            "not_before": rnd.choice([0.0, self.now + 3, self.now + 30]),
            "max_attempts": rnd.choice([None, 1, 2, 3]),
            "count_attempt": rnd.random() < 0.7, "reason": rnd.choice(["", "bad"])}
        assert len(eng.release(q, mine, owner, **kwargs)) == \
            len(mem.release(q, its, owner, **kwargs)), where

    def move(self, eng: SQLiteEngine, q: str, where: object) -> None:
        dst, mem = self.rnd.choice(QUEUES), self.mem
        if self.rnd.random() < 0.5:
            assert eng.move(q, dst) == mem.move(q, dst), where
            return
        ready = eng.peek(q, ALL)
        chosen = {r.data for r in self.rnd.sample(ready, min(len(ready),
                                                             self.rnd.randint(0, 4)))}
        assert eng.move(q, dst, [r.id for r in ready if r.data in chosen]) == \
            mem.move(q, dst, [r.id for r in mem.peek(q, ALL) if r.data in chosen]), where

    def restore(self, eng: SQLiteEngine, where: object) -> None:
        q = self.taken[-1][0]
        batch = [t for t in self.taken if t[0] == q][-self.rnd.randint(1, 3):]
        outcomes = []
        for engine, k in ((eng, 1), (self.mem, 2)):
            try:
                engine.restore(q, [t[k] for t in batch])
                outcomes.append(True)
            except ValueError:
                outcomes.append(False)
        assert outcomes[0] == outcomes[1], where
        if outcomes[0]:
            self.taken = [t for t in self.taken if t not in batch]

    def compare(self, where: object) -> None:
        mem = self.mem
        for name in QUEUES:
            reader = self.rnd.choice(self.handles)
            ready, leased = _ready(mem, name), _leased(mem, name)
            assert reader.counts(name) == mem.counts(name), (where, name)
            assert _ready(reader, name) == ready, (where, name)
            assert _leased(reader, name) == leased, (where, name)
            assert reader.owners(name) == mem.owners(name), (where, name)
            size = self.rnd.randint(1, 7)
            assert _paged(reader, name, size, leased=False) == ready, (where, name, size)
            assert _paged(reader, name, size, leased=True) == leased, (where, name, size)

    def step(self, step: int) -> None:
        rnd = self.rnd
        op = rnd.choice(["put", "put", "put_many", "take", "lease", "lease", "ack",
                         "release", "expire", "move", "purge", "restore", "tick"])
        q = rnd.choice(QUEUES)
        if rnd.random() < 0.03:
            self.handles.pop(0).close()
            self.handles.append(SQLiteEngine(self.path))
        eng = rnd.choice(self.handles)
        where = (self.seed, step, op, q)
        if op in ("put", "put_many"):
            self.put(eng, q, 1 if op == "put" else rnd.randint(0, 70))
        elif op == "tick":
            self.now += rnd.choice([0.5, 5, 20])
        elif op == "take":
            self.take(eng, q, None, where)
        elif op == "lease":
            self.take(eng, q, Lease(rnd.choice(OWNERS), self.now + rnd.choice([1, 10, 50])),
                      where)
        elif op in ("ack", "release") and self.held:
            self.settle(eng, op, where)
        elif op == "expire":
            owners = rnd.sample(OWNERS, rnd.randint(0, 2))
            max_attempts = rnd.choice([None, 1, 2, 3])
            assert eng.expire(q, self.now, owners=owners, max_attempts=max_attempts) == \
                self.mem.expire(q, self.now, owners=owners, max_attempts=max_attempts), where
        elif op == "move":
            self.move(eng, q, where)
        elif op == "purge" and rnd.random() < 0.2:
            assert eng.purge(q) == self.mem.purge(q), where
        elif op == "restore" and self.taken:
            self.restore(eng, where)
        self.compare(where)


@pytest.mark.parametrize("seed", range(12))
def test_sqlite_does_what_the_memory_engine_does(tmp_path: Path, seed: int) -> None:
    run = Run(tmp_path / "q.sqlite", seed)
    try:
        for step in range(150):
            run.step(step)
    finally:
        for handle in run.handles:
            handle.close()
