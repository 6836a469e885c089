"""The LMDB engine's move writes the queues' rows once per chunk of records, not once per
record, and stays one transaction: a kill at any moment leaves every record in exactly
one of the two queues, under counts that match the records."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from spoolq.engines import Lease, LMDBEngine
from spoolq.engines import lmdb as lmdb_engine

from .killing import killed_mid_work


def _records(eng: LMDBEngine, queue: str) -> list[bytes]:
    out: list[bytes] = []
    while page := eng.peek(queue, 1000, len(out)):
        out.extend(r.data for r in page)
    return out


def test_a_move_writes_each_queue_row_once_per_chunk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        payloads = [b"%05d" % i for i in range(5000)]
        eng.append("src", payloads, [5] * len(payloads), 1.0)
        saves: list[str] = []
        real = lmdb_engine._LMDBStore._save

        def counting(self: lmdb_engine._LMDBStore, txn: object, name: str,
                     q: object) -> None:
            saves.append(name)
            real(self, txn, name, q)  # type: ignore[arg-type]

        monkeypatch.setattr(lmdb_engine._LMDBStore, "_save", counting)
        assert eng.move("src", "dst") == 5000
        # One per record wrote the row of dst 5000 times.
        assert saves.count("dst") <= 20 and saves.count("src") == 1
        monkeypatch.undo()
        assert _records(eng, "dst") == payloads
        assert eng.counts("dst") == (5000, 0, 25000, 25000)
        assert eng.counts("src") == (0, 0, 0, 0)
    finally:
        eng.close()


def test_a_move_keeps_order_ids_and_counts_across_chunks(tmp_path: Path) -> None:
    """Ready and delayed records, records with a reason and of several sizes: moved in id
    order under new ids above every id given before, attempts and reason cleared."""
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        payloads = [os.urandom(1 + i % 700) for i in range(3000)]
        ids = eng.append("q", payloads, [len(p) + 1 for p in payloads], 1.0)
        leased = eng.take("q", 400, 1.0, Lease("o", 50.0))
        # Half come back delayed, half go to the dead letters with a reason.
        eng.release("q", [(r.id, 1) for r in leased[:200]], "o", not_before=1e9,
                    max_attempts=None)
        eng.release("q", [(r.id, 1) for r in leased[200:]], "o", not_before=0.0,
                    max_attempts=1, reason="bad")
        eng.append("dst", [b"first"], [5], 1.0)
        last = eng.append("q", [b"tail"], [4], 1.0)[0]
        assert eng.move("q", "dst") == 2801
        moved = eng.peek("dst", 5000)
        assert [r.data for r in moved] == [b"first", *payloads[:200], *payloads[400:],
                                            b"tail"]
        assert [r.id for r in moved[1:]] == list(range(last + 1, last + 2802))
        assert all(r.attempts == 0 and r.reason is None for r in moved)
        kept = payloads[:200] + payloads[400:] + [b"tail"]
        assert eng.counts("dst") == (2802, 0, sum(map(len, kept)) + 5,
                                     sum(len(p) + 1 for p in kept[:-1]) + 4 + 5)
        assert eng.counts("q") == (0, 0, 0, 0)
        dead = "q.dead"
        assert eng.move(dead, "q", [ids[250], ids[399] + 10**6]) == 0  # new ids there
        (first_dead,) = eng.peek(dead, 1)
        assert eng.move(dead, "q", [first_dead.id]) == 1
        assert eng.move(dead, "q") == 199
        assert [r.data for r in eng.peek("q", 300)] == payloads[200:400]
        assert eng.counts(dead) == (0, 0, 0, 0)
        assert eng.counts("q")[:1] == (200,)
    finally:
        eng.close()


def test_a_move_of_a_queue_onto_itself_moves_each_record_once(tmp_path: Path) -> None:
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        payloads = [b"%d" % i for i in range(2500)]
        ids = eng.append("q", payloads, [1] * 2500, 1.0)
        assert eng.move("q", "q") == 2500
        got = eng.peek("q", 3000)
        assert [r.data for r in got] == payloads
        assert got[0].id > ids[-1]
        assert eng.counts("q") == (2500, 0, sum(map(len, payloads)), 2500)
    finally:
        eng.close()


def test_a_move_holds_a_chunk_of_records_in_memory_not_the_queue(tmp_path: Path) -> None:
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        payloads = [os.urandom(4096) for _ in range(4000)]  # 16 MB
        eng.append("src", payloads, [4096] * len(payloads), 1.0)
        tracemalloc.start()
        try:
            assert eng.move("src", "dst") == len(payloads)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4_000_000, f"{peak} bytes held to move 16 MB"
        assert eng.counts("dst").ready == len(payloads)
    finally:
        eng.close()


def _moving(path: Path, out: int) -> None:
    eng = LMDBEngine(path, sync=False)
    os.write(out, b"open\n")
    eng.move("src", "dst")
    os.write(out, b"moved\n")
    os.write(out, b"%d\n" % eng.move("dst", "src"))
    os.write(out, b"back\n")


@pytest.mark.parametrize("after", [0.05, 0.15, 0.3])
def test_a_move_killed_at_any_moment_leaves_each_record_in_one_queue(
        tmp_path: Path, after: float) -> None:
    path = tmp_path / "q.lmdb"
    eng = LMDBEngine(path, sync=False)
    payloads = [b"%06d" % i + b"." * (i % 50) for i in range(60_000)]
    eng.append("dst", payloads[:10], [7] * 10, 1.0)
    eng.append("src", payloads[10:], [7] * (len(payloads) - 10), 1.0)
    eng.close()
    said = killed_mid_work(lambda out: _moving(path, out), after)
    assert said[:1] == ["open"], said
    eng = LMDBEngine(path)
    try:
        src, dst = _records(eng, "src"), _records(eng, "dst")
        assert sorted(src + dst) == sorted(payloads)  # each record in exactly one queue
        for name, held in (("src", src), ("dst", dst)):
            assert eng.counts(name) == (len(held), 0, sum(map(len, held)), 7 * len(held))
        # Whole moves or none: src is all of it, or nothing, and dst keeps its order.
        assert len(src) in (0, len(payloads) - 10, len(payloads))
        if "moved" in said and "back" not in said:
            assert len(src) in (0, len(payloads))
    finally:
        eng.close()
