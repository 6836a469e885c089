"""The LMDB engine's count of each owner's leases and each queue's earliest lease end
(format 3): owners() reads the counts and expire() reads no lease before that end, so
both must agree with the leased records through every change; files of earlier formats
are read as they are and counted when opened for writing."""

from __future__ import annotations

import logging
import math
import random
import struct
from pathlib import Path

import lmdb
import pytest

from spoolq.engines import Engine, Lease, LMDBEngine, MemoryEngine

from .test_lmdb_engine import as_earlier_format

_OWNERS = ["a", "b", "ünï", "o" * 448]
_ENDS = [-math.inf, -5.0, -0.0, 0.0, 1.0, 2.5, 10.0, 1e300, math.inf]


def _state(eng: Engine, queue: str) -> tuple[object, ...]:
    leased = eng.peek_leased(queue, 10_000)
    return (eng.counts(queue), eng.owners(queue),
            sorted((lr.record.id, lr.record.attempts, lr.owner, lr.until) for lr in leased),
            [r.id for r in eng.peek(queue, 10_000)], [r.id for r in eng.peek(queue + ".dead",
                                                                                10_000)])


def _step(rng: random.Random, engines: list[Engine], held: dict[int, tuple[int, str]]) -> None:
    """One random change, made on every engine; their answers must agree."""
    queue = rng.choice(["q", "q", "r"])
    op = rng.choice(["put", "lease", "lease", "ack", "release", "expire", "expire_owner",
                     "purge" if rng.random() < 0.05 else "put"])
    answers: list[object]
    if op == "put":
        n = rng.randint(1, 4)
        answers = [eng.append(queue, [b"x"] * n, [1] * n, 0.0) for eng in engines]
    elif op == "lease":
        n, owner, until = rng.randint(1, 5), rng.choice(_OWNERS), rng.choice(_ENDS)
        got = [eng.take(queue, n, 0.0, Lease(owner, until)) for eng in engines]
        answers = [[(r.id, r.attempts) for r in g] for g in got]
        for ident, attempts in answers[0]:  # type: ignore[union-attr]
            held[ident] = (attempts, owner)
    elif op in ("ack", "release"):
        picked = rng.sample(sorted(held), min(len(held), rng.randint(1, 4)))
        owner = held[picked[0]][1] if picked and rng.random() < 0.8 else rng.choice(_OWNERS)
        deliveries = [(i, held[i][0]) for i in picked]
        if op == "ack":
            answers = [sorted(eng.ack(queue, deliveries, owner)) for eng in engines]
        else:
            not_before, most = rng.choice([0.0, 5.0]), rng.choice([None, 2])
            answers = [sorted(eng.release(queue, deliveries, owner, not_before=not_before,
                                          max_attempts=most)) for eng in engines]
    elif op == "expire":
        now, most = rng.choice([*_ENDS, math.nan, 10**400]), rng.choice([None, 3])
        before = [_state(eng, queue) for eng in engines]
        answers = [eng.expire(queue, now, max_attempts=most) for eng in engines]
        assert answers[0] == answers[1], (now, most, before)
    elif op == "expire_owner":
        gone = rng.sample([*_OWNERS, "nobody"], 2)
        answers = [eng.expire(queue, -math.inf, owners=gone) for eng in engines]
    else:
        answers = [eng.purge(queue) for eng in engines]
    assert all(a == answers[0] for a in answers), (op, answers)
    states = [_state(eng, queue) for eng in engines]
    assert all(s == states[0] for s in states), (op, states)


@pytest.mark.parametrize("seed", range(4))
def test_expire_and_owners_agree_with_the_memory_engine_through_random_changes(
        tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "q.lmdb"
    lm, mem = LMDBEngine(path), MemoryEngine()
    held: dict[int, tuple[int, str]] = {}
    try:
        for i in range(300):
            _step(rng, [lm, mem], held)
            if i % 100 == 99:  # the index is on disk, not in this handle
                lm.close()
                lm = LMDBEngine(path)
    finally:
        lm.close()


def test_a_format_2_file_is_read_as_it_is_and_its_leases_counted_when_opened_for_writing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "q.lmdb"
    eng = LMDBEngine(path)
    eng.append("q", [b"a", b"b", b"c", b"d"], [1] * 4, 1.0)
    early = eng.take("q", 2, 1.0, Lease("early", 10.0))
    late = eng.take("q", 1, 1.0, Lease("late", 50.0))
    eng.close()
    as_earlier_format(path, 2)
    before = path.read_bytes()

    reader = LMDBEngine(path, read_only=True)
    try:
        assert reader.get_meta("format_version") == b"2"
        assert reader.owners("q") == {"early": 2, "late": 1}
    finally:
        reader.close()
    assert path.read_bytes() == before

    with caplog.at_level(logging.INFO, logger="spoolq"):
        eng = LMDBEngine(path)
    try:
        assert eng.get_meta("format_version") == b"3"
        assert any("upgraded from format 2 to 3 (0 delayed records indexed, 3 leases counted)"
                   in r.getMessage() for r in caplog.records)
        assert eng.owners("q") == {"early": 2, "late": 1}
        assert eng.expire("q", 20.0) == 2
        assert eng.owners("q") == {"late": 1}
        assert eng.ack("q", [(late[0].id, 1)], "late") == [late[0].id]
        assert eng.owners("q") == {}
        assert sorted(r.id for r in eng.take("q", 5, 20.0, None)) == sorted(
            [r.id for r in early] + [4])
    finally:
        eng.close()


def _as_an_earlier_release(path: Path, owner: str, until: float, acked: int,
                           acker: str) -> None:
    """Do in ``path`` what a process of the release before format 3, which opened the
    file before it was upgraded, does: lease queue q's two oldest ready records to
    ``owner`` and ack record ``acked`` that ``acker`` holds, writing q's row in the
    layout of format 2 and leaving ``lease_owners`` as it is."""
    env = lmdb.open(str(path), subdir=False, max_dbs=10)
    try:
        with env.begin(write=True) as txn:
            queues, ready, leased = (env.open_db(name, txn=txn)
                                     for name in (b"queues", b"ready", b"leased"))
            number, n_ready, n_leased, stored, raw = struct.unpack_from(
                ">Iqqqq", txn.get(b"q", db=queues))
            prefix = struct.pack(">I", number)
            cur = txn.cursor(db=ready)
            assert cur.set_range(prefix)
            for _ in range(2):
                key, value = cur.item()
                assert key.startswith(prefix)
                value = value[:8] + struct.pack(">I", 1) + value[12:]  # attempts 1
                txn.put(key, struct.pack(">dH", until, len(owner)) + owner.encode() + value,
                        db=leased)
                cur.delete()
            gone = txn.pop(struct.pack(">IQ", number, acked), db=leased)
            assert gone is not None
            assert gone[10:10 + struct.unpack_from(">dH", gone)[1]] == acker.encode()
            size = len(gone) - 10 - len(acker.encode()) - 24  # header 24 bytes, no reason
            txn.put(b"q", struct.pack(">Iqqqq", number, n_ready - 2, n_leased + 1,
                                      stored - size, raw - 1), db=queues)
    finally:
        env.close()


def test_leases_an_earlier_release_took_and_acked_in_a_format_3_file_are_counted_again(
        tmp_path: Path) -> None:
    path = tmp_path / "q.lmdb"
    eng = LMDBEngine(path)
    try:
        eng.append("q", [b"a", b"b", b"c", b"d", b"e"], [1] * 5, 1.0)
        early = eng.take("q", 2, 1.0, Lease("early", 100.0))
    finally:
        eng.close()
    # A process of the earlier release leases two records until 10 and acks one of those
    # "early" holds: the counts say nothing of it.
    _as_an_earlier_release(path, "older", 10.0, early[0].id, "early")

    reader = LMDBEngine(path, read_only=True)
    try:
        assert reader.owners("q") == {"early": 1, "older": 2}
    finally:
        reader.close()
    eng = LMDBEngine(path)
    try:
        assert eng.owners("q") == {"early": 1, "older": 2}
        assert eng.expire("q", 5.0, owners=["older"]) == 2  # its process died
        assert eng.owners("q") == {"early": 1}
        again = eng.take("q", 2, 5.0, Lease("later", 10.0))
        assert eng.expire("q", 9.0) == 0
        assert eng.expire("q", 10.0) == 2  # the leases of "later" ended
        assert eng.owners("q") == {"early": 1}
        assert eng.ack("q", [(early[1].id, 1)], "early") == [early[1].id]
        assert eng.owners("q") == {}
        assert eng.counts("q").leased == 0
        assert len(again) == 2
    finally:
        eng.close()


def test_a_stale_row_is_counted_again_at_its_queue_s_next_write(tmp_path: Path) -> None:
    path = tmp_path / "q.lmdb"
    eng = LMDBEngine(path)
    try:
        eng.append("q", [b"a", b"b", b"c", b"d", b"e"], [1] * 5, 1.0)
        early = eng.take("q", 2, 1.0, Lease("early", 100.0))
    finally:
        eng.close()
    _as_an_earlier_release(path, "older", 10.0, early[0].id, "early")
    eng = LMDBEngine(path)
    try:
        # A put rewrites the row: the leases of "older" are counted then, and the end of
        # theirs is the queue's earliest, which an expire without owners must not miss.
        eng.append("q", [b"f"], [1], 2.0)
        assert eng.owners("q") == {"early": 1, "older": 2}
        assert eng.expire("q", 10.0) == 2
        assert eng.owners("q") == {"early": 1}
    finally:
        eng.close()
