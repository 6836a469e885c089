"""The dbm and pickle engines used the way a careless or hostile user would: queues moved
into themselves, names of the wrong type, a damaged ``CURRENT``, a pickle file holding an id
twice, and processes killed at random moments of lease-heavy work."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

import spoolq
from spoolq import open_engine
from spoolq.engines import DBMEngine, Engine, Lease, MemoryEngine, StoredRecord

from .conftest import queue_path
from .killing import killed_mid_work

SINGLE_PROCESS = ["dbm", "pickle"]


def _generation(path: Path) -> str:
    return (path / "CURRENT").read_text().split()[1]


# ---- a queue moved into itself ------------------------------------------------------------

def _filled(eng: Engine) -> None:
    """Four records, the first of them leased and given back (held aside on dbm)."""
    eng.append("q", [b"a", b"b", b"c", b"d"], [1] * 4, 1.0)
    [rec] = eng.take("q", 1, 1.0, Lease("o", 10.0))
    eng.release("q", [(rec.id, rec.attempts)], "o", not_before=0.0, max_attempts=None)


@pytest.mark.parametrize("ids", [None, list(range(1, 100))], ids=["all", "by-id"])
@pytest.mark.parametrize("engine", SINGLE_PROCESS)
def test_a_queue_moved_into_itself_keeps_its_order_and_counts_each_record_once(
        tmp_path: Path, engine: str, ids: list[int] | None) -> None:
    oracle = MemoryEngine()
    _filled(oracle)
    eng = open_engine(queue_path(tmp_path, engine))
    try:
        _filled(eng)
        assert eng.move("q", "q", ids) == oracle.move("q", "q", ids) == 4
        assert [r.data for r in eng.peek("q", 10)] == [b"a", b"b", b"c", b"d"]
        assert eng.peek("q", 10) == oracle.peek("q", 10)
        assert eng.counts("q") == oracle.counts("q")
        assert eng.append("q", [b"e"], [1], 1.0) == oracle.append("q", [b"e"], [1], 1.0)
    finally:
        eng.close()


# ---- values the state cannot hold as given ------------------------------------------------

@pytest.mark.parametrize("engine", SINGLE_PROCESS)
def test_queue_names_and_lease_owners_of_another_type_are_refused(tmp_path: Path,
                                                                  engine: str) -> None:
    path = queue_path(tmp_path, engine)
    eng = open_engine(path)
    try:
        eng.append("q", [b"a", b"b"], [1, 1], 1.0)
        with pytest.raises(TypeError, match="queue name must be a str"):
            eng.append(7, [b"x"], [1], 1.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="queue name must be a str"):
            eng.append(None, [b"x"], [1], 1.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="queue name must be a str"):
            eng.move("q", 5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="lease owner must be a str"):
            eng.take("q", 1, 2.0, Lease(7, 10.0))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="raw size must be an int"):
            eng.append("q", [b"x", b"y"], [1, "2"], 1.0)  # type: ignore[list-item]
        with pytest.raises(TypeError, match="metadata key must be a str"):
            eng.set_meta(5, b"v")  # type: ignore[arg-type]
        [taken] = eng.take("q", 1, 2.0, None)
        with pytest.raises(TypeError, match="queue name must be a str"):
            eng.restore(None, [taken])  # type: ignore[arg-type]
        eng.restore("q", [taken])
        [leased] = eng.take("q", 1, 2.0, Lease("me", 10.0))
        with pytest.raises(TypeError, match="reason must be a str"):
            eng.release("q", [(leased.id, 1)], "me", not_before=0.0, max_attempts=1,
                        reason=b"why")  # type: ignore[arg-type]
        assert eng.counts("q") == (1, 1, 2, 2)
        assert eng.release("q", [(leased.id, 1)], "me", not_before=0.0,
                           max_attempts=None) == [leased.id]
        assert eng.queues() == ["q"]
        assert eng.counts("q") == (2, 0, 2, 2)
    finally:
        eng.close()
    eng = open_engine(path)
    try:
        assert eng.queues() == ["q"]
        assert [r.data for r in eng.peek("q", 5)] == [b"a", b"b"]
        assert eng.get_meta("5") is None
    finally:
        eng.close()


# ---- a damaged CURRENT --------------------------------------------------------------------

def test_dbm_current_naming_a_missing_generation_is_reported_and_no_file_removed(
        tmp_path: Path) -> None:
    path = tmp_path / "q.dbm"
    eng = DBMEngine(path)
    eng.append("q", [b"precious"], [8], 1.0)
    eng.close()
    live = _generation(path)
    before = sorted(os.listdir(path))
    (path / "CURRENT").write_text("spoolq-dbm gen-000009\n")
    for read_only in (False, True):
        with pytest.raises(spoolq.CorruptError, match="gen-000009"):
            DBMEngine(path, read_only=read_only)
        assert sorted(os.listdir(path)) == before
    # Once CURRENT names the generation again, every record is there.
    (path / "CURRENT").write_text(f"spoolq-dbm {live}\n")
    eng = DBMEngine(path)
    try:
        assert [r.data for r in eng.peek("q", 5)] == [b"precious"]
    finally:
        eng.close()


# ---- killed at random moments of lease-heavy work -----------------------------------------
# A forked worker appends, leases, acks, nacks (to the dead letters after 3 attempts),
# takes and restores, expires and sets metadata, reporting around each call that removes or
# adds records; the supervisor kills it at a random moment and checks, after reopening,
# that every record confirmed present is there once and whole, nothing confirmed gone came
# back, and each queue's counts (ready, leased, bytes) match the records it lists.

_SEEN = ("q", "q.dead")


def _payload(seq: int) -> bytes:
    return b"%d:" % seq + bytes([seq % 251]) * ((seq * 7919) % 700)


def _seq(data: bytes) -> int:
    return int(data.split(b":")[0])


def _work(path: str, out: int, seed: int, seq: int) -> None:
    rnd = random.Random(seed)
    report = os.fdopen(out, "w", buffering=1)  # a line a write(2): whole lines or nothing
    eng = open_engine(path)
    held: list[StoredRecord] = []
    while True:
        r = rnd.random()
        if r < 0.02:
            eng.close()
            eng = open_engine(path)
            held = []
        elif r < 0.35:
            data = [_payload(seq + i) for i in range(rnd.randint(1, 8))]
            report.write("A " + " ".join(str(_seq(d)) for d in data) + "\n")
            eng.append("q", data, [2 * len(d) for d in data], 1.0)
            report.write("a\n")
            seq += len(data)
        elif r < 0.5:
            held += eng.take("q", rnd.randint(1, 4), 1.0, Lease("w", 1e12))
        elif r < 0.6 and held:
            batch, held = held[:3], held[3:]
            report.write("K " + " ".join(str(_seq(g.data)) for g in batch) + "\n")
            eng.ack("q", [(g.id, g.attempts) for g in batch], "w")
            report.write("k\n")
        elif r < 0.72 and held:
            batch, held = held[:3], held[3:]
            eng.release("q", [(g.id, g.attempts) for g in batch], "w",
                        not_before=rnd.choice([0.0, 5.0]), max_attempts=3)
        elif r < 0.85:
            report.write("T\n")
            got = eng.take("q", rnd.randint(1, 4), 1.0, None)
            report.write("t " + " ".join(str(_seq(g.data)) for g in got) + "\n")
            if got and rnd.random() < 0.5:
                report.write("R " + " ".join(str(_seq(g.data)) for g in got) + "\n")
                eng.restore("q", got)
                report.write("r\n")
        elif r < 0.9:
            eng.expire("q", 2.0, max_attempts=3)
        else:
            eng.set_meta("m", b"%d" % rnd.randrange(1000))


def _replay(lines: list[str], present: set[int]) -> tuple[set[int], set[int], set[int]]:
    """The records present after the calls the report confirms, and those the call in
    flight may have added and removed."""
    maybe_in: set[int] = set()
    maybe_out: set[int] = set()
    for line in lines:
        kind, *rest = line.split()
        numbers = {int(x) for x in rest}
        if kind == "A":
            maybe_in, maybe_out = numbers, set()
        elif kind == "K":
            maybe_in, maybe_out = set(), numbers
        elif kind == "R":
            maybe_in, maybe_out = numbers, set()
        elif kind == "T":
            maybe_in, maybe_out = set(), set(present)
        elif kind in ("a", "r"):
            present, maybe_in = present | maybe_in, set()
        elif kind == "k":
            present, maybe_out = present - maybe_out, set()
        elif kind == "t":
            present, maybe_out = present - numbers, set()
    return present, maybe_in, maybe_out


def _check(path: str, lines: list[str], present: set[int]) -> set[int]:
    present, maybe_in, maybe_out = _replay(lines, present)
    eng = open_engine(path)
    try:
        seen: list[int] = []
        for name in _SEEN:
            ready = eng.peek(name, 1_000_000)
            leased = [lr.record for lr in eng.peek_leased(name, 1_000_000)]
            records = ready + leased
            for rec in records:
                assert rec.data == _payload(_seq(rec.data)), f"record {rec.id} is half-written"
                assert rec.raw_size == 2 * len(rec.data)
            assert tuple(eng.counts(name)) == (
                len(ready), len(leased), sum(len(r.data) for r in records),
                sum(r.raw_size for r in records)), f"the counts of {name} are wrong"
            seen += [_seq(r.data) for r in records]
        assert len(seen) == len(set(seen)), "a record is there twice"
        found = set(seen)
        assert found - present <= maybe_in, f"back from nowhere: {sorted(found - present)}"
        assert present - found <= maybe_out, f"lost: {sorted(present - found)}"
    finally:
        eng.close()
    return found


def supervise(path: str, seconds: float, seed: int) -> int:
    """Kill workers on ``path`` for ``seconds``; return how many were killed and checked."""
    rnd = random.Random(seed)
    deadline = time.monotonic() + seconds
    present: set[int] = set()
    rounds = 0
    while time.monotonic() < deadline:
        work = partial(_work, path, seed=rnd.randrange(1 << 30), seq=rounds * 1_000_000)
        lines = killed_mid_work(work, rnd.uniform(0.0, 0.25))
        present = _check(path, lines, present)
        rounds += 1
    return rounds


@pytest.mark.parametrize("engine", SINGLE_PROCESS)
def test_leases_nacks_and_restores_killed_at_random_moments_keep_records_and_counts(
        tmp_path: Path, engine: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys\n"
         "from tests.test_dbm_pickle_hostile import supervise\n"
         "print(supervise(sys.argv[1], 2.5, 11))", queue_path(tmp_path, engine)],
        cwd=Path(__file__).resolve().parents[1], check=False, capture_output=True, text=True,
        timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 5


# ---- a pickle file naming one id twice ----------------------------------------------------

@pytest.mark.parametrize("where", ["same queue", "other queue"])
def test_pickle_file_holding_one_id_twice_is_damaged(tmp_path: Path, where: str) -> None:
    path = tmp_path / "q.pickle"
    eng = open_engine(path)
    eng.append("q", [b"a"], [1], 1.0)
    eng.close()
    with path.open("rb") as f:
        doc = pickle.loads(pickle.load(f)["body"])
    doc["meta"]["format_version"] = b"1"  # a file of version 1 has no checksum to redo
    record = doc["queues"]["q"][0]
    doc["queues"].setdefault("q" if where == "same queue" else "other", []).append(record)
    path.write_bytes(pickle.dumps(doc, protocol=5))
    before = path.read_bytes()
    with pytest.raises(spoolq.CorruptError, match="record 1 twice"):
        open_engine(path)
    assert path.read_bytes() == before


_GOOD = (1, b"x", 1, 0, 1.0, None, None, 0.0)


@pytest.mark.parametrize("change", [
    {"queues": {"q": [(0, *_GOOD[1:])]}},
    {"queues": {"q": [(-1, *_GOOD[1:])]}},
    {"queues": {"q": [(True, *_GOOD[1:])]}},
    {"queues": {"q": [(1, b"x", -5, *_GOOD[3:])]}},
    {"queues": {"q": [(1, b"x", 1, -3, *_GOOD[4:])]}},
    {"queues": {"q": [(1, b"x", 1, 0, float("nan"), *_GOOD[5:])]}},
    {"queues": {"q": [(*_GOOD[:6], "owner", float("nan"))]}},
    {"next_id": 0, "queues": {}},
    {"next_id": True, "queues": {}},
], ids=["id-0", "id-negative", "id-bool", "raw-size-negative", "attempts-negative",
        "enqueued-nan", "visible-nan", "next-id-0", "next-id-bool"])
def test_pickle_file_holding_values_no_queue_holds_is_damaged(tmp_path: Path,
                                                              change: dict[str, object]) -> None:
    """Values the engine refuses on the way in and so never writes: a file holding them
    opened as a queue of negative counts, or of a lease that never expires."""
    path = tmp_path / "q.pickle"
    doc = {"meta": {"application": b"spoolq", "format_version": b"1"}, "next_id": 10,
           "queues": {"q": [_GOOD]}, **change}
    path.write_bytes(pickle.dumps(doc, protocol=5))
    with pytest.raises(spoolq.CorruptError, match="damaged"):
        spoolq.SyncQueue.create(path)
