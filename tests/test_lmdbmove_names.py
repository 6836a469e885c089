"""LMDB keys a queue by its name, of at most 511 bytes, and a queue's dead letters by
its name and ".dead": a queue is created only when the name of its dead letters fits
too, so a name of 507 to 511 bytes is refused before anything is written (it took
records whose dead letters could then never be buried)."""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest

from spoolq.engines import Lease, LMDBEngine

REFUSED = (r"a queue name of {} bytes of UTF-8 is refused in an LMDB queue: its dead "
           r"letters' queue, the name and '\.dead', would be {} bytes, more than the 511 an "
           r"LMDB key holds; a queue name takes 1 to 506 bytes \(511 ending in '\.dead'\); "
           r"nothing was changed")


@pytest.mark.parametrize("name", ["q" * 507, "q" * 511, "é" * 254, "q" * 505 + "é"],
                         ids=["507", "511", "254-e-acute", "505-and-e-acute"])
def test_a_name_whose_dead_letters_cannot_be_named_is_refused(tmp_path: Path,
                                                              name: str) -> None:
    size = len(name.encode())
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        (first,) = eng.append("q", [b"a"], [1], 1.0)
        with pytest.raises(ValueError, match=REFUSED.format(size, size + 5)):
            eng.append(name, [b"x"], [1], 1.0)
        with pytest.raises(ValueError, match=REFUSED.format(size, size + 5)):
            eng.move("q", name)
        (taken,) = eng.take("q", 1, 1.0, None)
        with pytest.raises(ValueError, match=REFUSED.format(size, size + 5)):
            eng.restore(name, [taken])
        eng.restore("q", [taken])
        assert eng.queues() == ["q"]
        assert eng.counts(name) == (0, 0, 0, 0)
        assert eng.counts("q") == (1, 0, 1, 1)
        assert [r.id for r in eng.peek("q", 5)] == [first]
        assert eng.append("q", [b"b"], [1], 1.0) == [first + 1]  # no id was used up
    finally:
        eng.close()


@pytest.mark.parametrize("name", ["q" * 506, "é" * 253], ids=["506", "253-e-acute"])
def test_the_longest_name_buries_its_dead_letters_and_takes_them_back(
        tmp_path: Path, name: str) -> None:
    dead = name + ".dead"
    assert len(dead.encode()) == 511
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        eng.append(name, [b"a", b"b"], [1, 1], 1.0)
        got = eng.take(name, 2, 1.0, Lease("o", 9.0))
        assert eng.release(name, [(r.id, 1) for r in got], "o", not_before=0.0,
                           max_attempts=1, reason="bad") == [r.id for r in got]
        assert [(r.data, r.reason) for r in eng.peek(dead, 5)] == [(b"a", "bad"),
                                                                    (b"b", "bad")]
        assert eng.counts(dead) == (2, 0, 2, 2)
        assert eng.counts(name) == (0, 0, 0, 0)
        assert eng.move(dead, name) == 2
        assert [r.data for r in eng.take(name, 5, 2.0, None)] == [b"a", b"b"]
        assert sorted(eng.queues()) == sorted([name, dead])
    finally:
        eng.close()


def test_a_dead_letter_queue_of_the_longest_name_can_be_written_to(tmp_path: Path) -> None:
    """A name of 507 to 511 bytes ending in '.dead' is the dead letters of a name that
    fits: records are appended there (as the queue buries a record it cannot decode)
    and moved there."""
    dead = "q" * 506 + ".dead"
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        eng.append(dead, [b"x"], [1], 1.0)
        eng.append("q", [b"y"], [1], 1.0)
        assert eng.move("q", dead) == 1
        assert [r.data for r in eng.peek(dead, 5)] == [b"x", b"y"]
    finally:
        eng.close()


def test_a_queue_of_such_a_name_already_in_a_file_is_used_but_buries_nothing(
        tmp_path: Path) -> None:
    """A file written before holds a queue of 510 bytes: its records are put and taken,
    and a release that would bury one in a queue of 515 bytes fails naming that size,
    leaving the record leased."""
    name = "q" * 510
    path = tmp_path / "q.lmdb"
    eng = LMDBEngine(path)
    eng.append("short", [b"a"], [1], 1.0)
    eng.close()
    env = lmdb.open(str(path), subdir=False, max_dbs=10)
    try:
        with env.begin(write=True) as txn:
            queues = env.open_db(b"queues", txn=txn)
            row = txn.pop(b"short", db=queues)
            assert row is not None
            txn.put(name.encode(), row, db=queues)
    finally:
        env.close()
    eng = LMDBEngine(path)
    try:
        eng.append(name, [b"b"], [1], 1.0)
        assert [r.data for r in eng.peek(name, 5)] == [b"a", b"b"]
        got = eng.take(name, 2, 1.0, Lease("o", 9.0))
        deliveries = [(r.id, 1) for r in got]
        with pytest.raises(ValueError, match=r"a queue name must be 1 to 511 bytes.*not 515"):
            eng.release(name, deliveries, "o", not_before=0.0, max_attempts=1)
        assert eng.counts(name) == (0, 2, 2, 2)
        assert eng.release(name, deliveries, "o", not_before=0.0,
                           max_attempts=None) == [r.id for r in got]
        assert eng.counts(name) == (2, 0, 2, 2)
        assert eng.queues() == [name]
    finally:
        eng.close()
