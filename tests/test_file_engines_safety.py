"""The single-process file engines (dbm, pickle) under kills, foreign files and odd paths."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import pytest

import spoolq
from spoolq import SyncQueue, open_engine
from spoolq.engines import DBMEngine, Lease

from .conftest import queue_path
from .killing import killed_mid_work


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          check=False, capture_output=True, text=True, timeout=60)


def _generation(path: Path) -> str:
    return (path / "CURRENT").read_text().split()[1]


# ---- dbm ----------------------------------------------------------------------------------


def test_dbm_generation_left_by_a_kill_during_compaction_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "q.dbm"
    # Killed right after CURRENT names the new generation, before the old one is removed.
    out = _run("""
        import os, sys
        import spoolq.engines.dbm as engine
        eng = engine.DBMEngine(sys.argv[1])
        eng.append("keep", [b"kept"], [4], 1.0)
        switch = engine.files.set_current
        def switch_then_die(*args):
            switch(*args)
            os._exit(9)
        engine.files.set_current = switch_then_die
        for _ in range(10):
            eng.append("churn", [b"x"] * 300, [1] * 300, 1.0)
            eng.take("churn", 300, 1.0, None)
    """, str(path))
    assert out.returncode == 9, out.stderr
    assert any(name.startswith("gen-000001") for name in os.listdir(path))
    # and a half-written generation from a compaction killed before it was named
    (path / "gen-000007.dat").write_bytes(b"half")
    (path / "CURRENT.tmp").write_text("spoolq-dbm gen-000007\n")
    eng = DBMEngine(path)
    try:
        assert [r.data for r in eng.peek("keep", 5)] == [b"kept"]
    finally:
        eng.close()
    live = _generation(path)
    assert all(name == "CURRENT" or name.startswith(live + ".") for name in os.listdir(path))


def test_dbm_path_of_another_programs_dbm_database_is_refused(tmp_path: Path) -> None:
    import dbm.dumb

    path = tmp_path / "cache.dbm"
    with dbm.dumb.open(str(path), "c") as db:  # makes cache.dbm.dat and cache.dbm.dir
        db[b"user"] = b"their data"
    before = sorted(os.listdir(tmp_path))
    for read_only in (False, True):
        with pytest.raises(spoolq.FormatError, match="another program"):
            open_engine(path, read_only=read_only)
    assert not path.exists()
    with dbm.dumb.open(str(path), "r") as db:
        assert db[b"user"] == b"their data"
    assert sorted(os.listdir(tmp_path)) == before


# ---- both ---------------------------------------------------------------------------------

SINGLE_PROCESS = ["dbm", "pickle"]


@pytest.mark.parametrize("engine", SINGLE_PROCESS)
def test_a_second_process_opening_through_a_symlink_is_refused(tmp_path: Path,
                                                               engine: str) -> None:
    real = queue_path(tmp_path, engine)
    link = str(tmp_path / f"link.{engine}")
    eng = open_engine(real)
    try:
        eng.append("q", [b"mine"], [4], 1.0)
        os.symlink(real, link)
        out = _run("""
            import sys, spoolq
            try:
                spoolq.open_engine(sys.argv[1]).close()
            except spoolq.LockTimeout:
                print("refused")
        """, link)
        assert out.stdout.strip() == "refused", out.stderr
    finally:
        eng.close()


def test_pickle_written_through_a_symlink_stays_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.pickle"
    link = tmp_path / "link.pickle"
    with SyncQueue.create(real) as q:
        q.put("first")
    link.symlink_to(real)
    with SyncQueue.create(link) as q:
        q.put("second")
    assert link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.pickle", "real.pickle",
                                                           "real.pickle.lock"]
    with SyncQueue.create(real) as q:
        assert q.get_many(None) == ["first", "second"]


def test_dbm_read_only_handle_reads_on_after_its_writer_compacted(tmp_path: Path) -> None:
    path = tmp_path / "q.dbm"
    eng = DBMEngine(path)
    eng.append("q", [b"a", b"b"], [1, 1], 1.0)
    eng.close()
    reader = DBMEngine(path, read_only=True)
    try:
        assert [r.data for r in reader.peek("q", 5)] == [b"a", b"b"]
        out = _run("""
            import sys
            from spoolq.engines import DBMEngine, Lease
            eng = DBMEngine(sys.argv[1])
            eng.take("q", 1, 1.0, None)
            for _ in range(5):
                eng.append("churn", [b"x"] * 300, [1] * 300, 1.0)
                eng.take("churn", 300, 1.0, None)
            eng.close()
        """, str(path))
        assert out.returncode == 0, out.stderr
        assert _generation(path) != "gen-000001"
        assert [r.data for r in reader.peek("q", 5)] == [b"b"]
        assert reader.peek_leased("q", 5) == []
        assert reader.counts("q").ready == 1
    finally:
        reader.close()


def test_pickle_open_leaves_other_files_named_like_the_queue_alone(tmp_path: Path) -> None:
    path = tmp_path / "q.pickle"
    SyncQueue.create(path).close()
    mine = [tmp_path / "q.pickle.backup.tmp", tmp_path / "q.pickle.2024-05-01.tmp"]
    for other in mine:
        other.write_bytes(b"the user's own file")
    with SyncQueue.create(path) as q:
        q.put(1)
    assert all(other.read_bytes() == b"the user's own file" for other in mine)


# ---- killed at random points --------------------------------------------------------------
# A worker forked from a supervisor process writes (appends, takes, leases, acks, reopens)
# and reports each call that returned; the supervisor kills it with SIGKILL at a random
# moment, reopens the queue and checks it against the reports: every confirmed record is
# there whole and in order, nothing confirmed taken comes back, only the one call in flight
# may or may not have happened, and ids never repeat. Then it forks the next worker. The
# supervisor is a process of its own so that nothing of pytest is forked.

_Reports = list[tuple[str, list[int]]]


def _payload(seq: int) -> bytes:
    return b"%d:" % seq + bytes([seq % 251]) * ((seq * 7919) % 3000)


def _work(path: str, out: int, seed: int, seq: int) -> None:
    rnd = random.Random(seed)
    report = os.fdopen(out, "w", buffering=1)  # a line a write(2): whole lines or nothing
    eng = open_engine(path)
    while True:
        r = rnd.random()
        if r < 0.03:
            eng.close()
            eng = open_engine(path)
        elif r < 0.45:
            k = rnd.randint(1, 20)
            report.write(f"A {seq} {k}\n")
            ids = eng.append("q", [_payload(seq + i) for i in range(k)], [1] * k, 1.0)
            report.write("a " + " ".join(map(str, ids)) + "\n")
            seq += k
        elif r < 0.8:
            n = rnd.randint(1, 20)
            report.write(f"T {n}\n")
            got = eng.take("q", n, 1.0, None)
            report.write("t " + " ".join(str(g.id) for g in got) + "\n")
        else:
            got = eng.take("q", rnd.randint(1, 5), 1.0, Lease("worker", 1e12))
            if got and rnd.random() < 0.5:
                report.write("K " + " ".join(str(g.id) for g in got) + "\n")
                done = eng.ack("q", [(g.id, g.attempts) for g in got], "worker")
                report.write("k " + " ".join(map(str, done)) + "\n")


def _check(path: str, reports: _Reports, present: dict[int, int],
           seq: int) -> tuple[dict[int, int], int]:
    """Check the queue against a killed worker's reports; the records it holds and the
    next sequence number to write."""
    doubt: tuple[str, list[int]] | None = None  # the call in flight when the kill came
    for kind, numbers in reports:
        if kind in "ATK":
            doubt = (kind, numbers)
        elif kind == "a":
            assert doubt is not None
            first = doubt[1][0]
            present.update((ident, first + n) for n, ident in enumerate(numbers))
            seq, doubt = first + len(numbers), None
        else:
            for ident in numbers:
                del present[ident]
            doubt = None
    eng = open_engine(path)
    try:
        eng.expire("q", 2e12)  # the dead worker's leases come back
        records = eng.peek("q", 1_000_000)
        ids = [r.id for r in records]
        assert ids == sorted(set(ids)), "out of order or twice"
        assert eng.counts("q").ready == len(records)
        for r in records:
            number = int(r.data.split(b":")[0])
            assert r.data == _payload(number), f"record {r.id} is half-written"
            if r.id in present:
                assert present[r.id] == number
            else:
                assert doubt is not None and doubt[0] == "A", f"record {r.id} from nowhere"
                assert doubt[1][0] <= number < doubt[1][0] + doubt[1][1]
        missing = set(present) - set(ids)
        if doubt is not None and doubt[0] == "T":
            assert len(missing) <= doubt[1][0], f"lost {sorted(missing)}"
        elif doubt is not None and doubt[0] == "K":
            assert missing <= set(doubt[1]), f"lost {sorted(missing)}"
        else:
            assert not missing, f"lost {sorted(missing)}"
        assert eng.append("probe", [b"p"], [1], 1.0)[0] > max([0, *ids]), "an id came back"
        eng.purge("probe")
    finally:
        eng.close()
    if doubt is not None and doubt[0] == "A":
        seq = doubt[1][0] + doubt[1][1]
    return {r.id: int(r.data.split(b":")[0]) for r in records}, seq


def _supervise(path: str, seconds: float, seed: int) -> int:
    """Kill workers on ``path`` for ``seconds``; return how many were killed and checked."""
    rnd = random.Random(seed)
    deadline = time.monotonic() + seconds
    present: dict[int, int] = {}
    seq = rounds = 0
    while time.monotonic() < deadline:
        work = partial(_work, path, seed=rnd.randrange(1 << 30), seq=seq)
        lines = killed_mid_work(work, rnd.uniform(0.0, 0.2))
        reports = [(kind, [int(x) for x in rest])
                   for kind, *rest in (line.split() for line in lines)]
        present, seq = _check(path, reports, present, seq)
        rounds += 1
    return rounds


@pytest.mark.parametrize("engine", SINGLE_PROCESS)
def test_a_process_killed_at_random_points_loses_nothing_confirmed(tmp_path: Path,
                                                                   engine: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys\n"
         "from tests.test_file_engines_safety import _supervise\n"
         "print(_supervise(sys.argv[1], 2.5, 7))", queue_path(tmp_path, engine)],
        cwd=Path(__file__).resolve().parents[1], check=False, capture_output=True, text=True,
        timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 5


@pytest.mark.parametrize("engine", SINGLE_PROCESS)
def test_a_refused_file_gets_no_lock_file_beside_it(tmp_path: Path, engine: str) -> None:
    path = Path(queue_path(tmp_path, engine))
    path.write_text("my notes, not a queue\n")
    (tmp_path / "folder.pickle").mkdir()
    (tmp_path / "folder.dbm").mkdir()
    (tmp_path / "folder.dbm" / "holiday.jpg").write_bytes(b"\xff\xd8")
    for refused in (path, tmp_path / f"folder.{engine}"):
        with pytest.raises(spoolq.FormatError, match="not a spoolq"):
            SyncQueue.create(refused)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name, "folder.pickle", "folder.dbm"])


def test_pickle_of_another_format_version_is_refused_by_its_version(tmp_path: Path) -> None:
    path = tmp_path / "q.pickle"
    path.write_bytes(pickle.dumps({"meta": {"application": b"spoolq", "format_version": b"3"},
                                   "next_id": 1, "queues": {}, "segments": []}, protocol=5))
    with pytest.raises(spoolq.FormatError, match="format version 3"):
        SyncQueue.create(path)


def test_dbm_queue_of_another_format_version_is_refused_by_its_version(tmp_path: Path) -> None:
    import dbm.dumb
    import json
    import zlib

    path = tmp_path / "q.dbm"
    with SyncQueue.create(path) as q:
        q.put("x")
    # A later version, with a state laid out another way, committed on top.
    body = json.dumps({"version": 2, "meta": {"application": b"spoolq".hex(),
                                               "format_version": b"2".hex()},
                       "lines": []}).encode()
    with dbm.dumb.open(str(path / _generation(path)), "w") as db:
        db[b"s999"] = zlib.crc32(body).to_bytes(4, "big") + body
    for options in ({}, {"recover": True}):
        with pytest.raises(spoolq.FormatError, match="format version 2"):
            SyncQueue.create(path, engine_options=options)


def test_a_read_only_open_of_an_sqlite_file_whose_name_is_not_utf8(tmp_path: Path) -> None:
    """The read-only URI is built from the name's bytes: a name that is not UTF-8
    failed with UnicodeEncodeError."""
    path = os.path.join(os.fsencode(tmp_path), b"jobs-\xff.sqlite").decode(
        "utf-8", "surrogateescape")
    with spoolq.SyncQueue.create(path) as q:
        q.put("kept")
    with spoolq.SyncQueue.create(path, engine_options={"read_only": True}) as q:
        assert q.peek() == ["kept"]


def test_sqlite_creation_waits_for_another_connection_holding_the_blank_file(
        tmp_path: Path) -> None:
    # Switching a blank file to WAL gets no busy wait from SQLite: a queue created while
    # another process held the new file (creating the same queue, say) raised LockTimeout
    # at once, whatever its timeout.
    import sqlite3
    import threading

    path = tmp_path / "q.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Timer(0.3, holder.execute, ("COMMIT",))
    released.start()
    try:
        with SyncQueue.create(path) as q:
            q.put("first")
            assert q.get_nowait() == "first"
    finally:
        released.join()
        holder.close()
    holder = sqlite3.connect(tmp_path / "held.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    start = time.monotonic()
    with pytest.raises(spoolq.LockTimeout, match=r"held\.sqlite"):
        SyncQueue.create(tmp_path / "held.sqlite", engine_options={"timeout": 0.2})
    assert 0.15 < time.monotonic() - start < 5
    holder.close()


def test_processes_creating_one_sqlite_queue_at_once_all_open_it(tmp_path: Path) -> None:
    child = textwrap.dedent("""
        import sys, time, spoolq
        start = float(sys.argv[2])
        while time.time() < start:
            pass
        with spoolq.SyncQueue.create(sys.argv[1]) as q:
            q.put(sys.argv[3])
    """)
    for trial in range(3):
        path = tmp_path / f"q{trial}.sqlite"
        start = time.time() + 0.5
        children = [subprocess.Popen([sys.executable, "-c", child, str(path), str(start),
                                      f"{trial}-{k}"], stderr=subprocess.PIPE)
                    for k in range(6)]
        for proc in children:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()
        with SyncQueue.create(path) as q:
            assert sorted(q.get_many(10, timeout=0)) == sorted(f"{trial}-{k}" for k in range(6))


@pytest.mark.parametrize("engine", ["sqlite", "lmdb", "dbm", "pickle"])
def test_a_queue_in_a_directory_that_does_not_exist_is_refused_naming_it(
        tmp_path: Path, engine: str) -> None:
    """SQLite said only 'unable to open database file' and LMDB that it needed write access
    to the file; the directory is not created."""
    missing = tmp_path / "not-made"
    path = queue_path(missing, engine)
    with pytest.raises(spoolq.EngineError, match=f"no directory {missing}"):
        SyncQueue.create(path)
    assert not missing.exists()
