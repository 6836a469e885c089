"""The dbm and pickle engines: files beside a queue, damaged indexes, bad input, file modes
and calls that fail half-way."""

from __future__ import annotations

import pickle
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import open_engine
from spoolq.engines import DBMEngine, Lease, PickleEngine

from .conftest import queue_path

SINGLE_PROCESS = ["dbm", "pickle"]


def _generation(path: Path) -> str:
    return (path / "CURRENT").read_text().split()[1]


# ---- dbm ----------------------------------------------------------------------------------

def test_dbm_open_leaves_the_users_directories_named_like_the_queue_alone(
        tmp_path: Path) -> None:
    path = tmp_path / "jobs.dbm"
    mine = tmp_path / "jobs.dbm.new-backup"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    left = tmp_path / "jobs.dbm.new-0123456789ab"  # named like a leftover, but a file
    left.write_text("mine too")
    leftover = tmp_path / "jobs.dbm.new-abcdef012345"  # what a killed creation leaves
    leftover.mkdir()
    (leftover / "gen-000001.dat").write_bytes(b"")
    DBMEngine(path).close()
    assert (mine / "precious.txt").read_text() == "keep me"
    assert left.read_text() == "mine too"
    assert not leftover.exists()


def test_dbm_damaged_index_line_is_a_corrupt_error(tmp_path: Path) -> None:
    path = tmp_path / "q.dbm"
    eng = DBMEngine(path)
    eng.append("q", [b"a"], [1], 0.0)
    eng.close()
    index = path / f"{_generation(path)}.dir"
    with index.open("a", encoding="latin-1") as f:
        f.write("'m1.5', (garbage\n")
    before = index.read_bytes()
    for read_only in (False, True):
        with pytest.raises(spoolq.CorruptError, match=r"index of gen-\d+ is damaged"):
            DBMEngine(path, read_only=read_only)
    assert index.read_bytes() == before


# ---- both ---------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", SINGLE_PROCESS)
def test_values_the_file_cannot_hold_are_refused_and_the_file_stays_readable(
        tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path, engine)
    eng = open_engine(path)
    try:
        eng.append("q", [b"first"], [5], 1.0)
        bad_calls: list[Callable[[], object]] = [
            lambda: eng.append("q", ["text"], [4], 1.0),  # type: ignore[list-item]
            lambda: eng.append("q", [b"ok", 7], [2, 1], 1.0),  # type: ignore[list-item]
            lambda: eng.set_meta("k", "text"),  # type: ignore[arg-type]
            lambda: eng.set_meta("k", 5),  # type: ignore[arg-type]
        ]
        for call in bad_calls:
            with pytest.raises(TypeError, match="must be bytes"):
                call()
        assert eng.get_meta("k") is None
        assert [r.data for r in eng.peek("q", 5)] == [b"first"]
        # Any bytes-like value is taken, and read back as bytes.
        likes: list[Any] = [bytearray(b"second"), memoryview(b"third")]
        eng.append("q", likes, [6, 5], 1.0)
        eng.set_meta("k", bytearray(b"v"))  # type: ignore[arg-type]
    finally:
        eng.close()
    eng = open_engine(path)
    try:
        got = eng.take("q", 5, 2.0, Lease("me", 10.0))
        assert [r.data for r in got] == [b"first", b"second", b"third"]
        assert all(type(r.data) is bytes for r in got)
        assert eng.get_meta("k") == b"v"
    finally:
        eng.close()


def test_pickle_lease_owner_and_reason_must_be_text(tmp_path: Path) -> None:
    path = tmp_path / "q.pickle"
    eng = PickleEngine(path)
    try:
        eng.append("q", [b"a"], [1], 1.0)
        with pytest.raises(TypeError, match="lease owner must be a str"):
            eng.take("q", 1, 2.0, Lease(7, 10.0))  # type: ignore[arg-type]
        [rec] = eng.take("q", 1, 2.0, Lease("me", 10.0))
        with pytest.raises(TypeError, match="reason must be a str"):
            eng.release("q", [(rec.id, rec.attempts)], "me", not_before=0.0, max_attempts=1,
                        reason=b"why")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="queue name must be a str"):
            eng.append(b"q", [b"b"], [1], 1.0)  # type: ignore[arg-type]
        assert eng.counts("q").leased == 1
    finally:
        eng.close()
    eng = PickleEngine(path)
    try:
        assert eng.owners("q") == {"me": 1}
        assert eng.queues() == ["q"]
    finally:
        eng.close()


def test_pickle_file_keeps_its_permissions_when_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "q.pickle"
    PickleEngine(path).close()
    path.chmod(0o600)
    eng = PickleEngine(path)
    try:
        eng.append("q", [b"secret"], [6], 1.0)
        eng.take("q", 1, 2.0, None)
    finally:
        eng.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_dbm_files_keep_their_permissions_through_a_compaction(tmp_path: Path) -> None:
    import dbm.dumb

    path = tmp_path / "q.dbm"
    eng = DBMEngine(path)
    eng.append("q", [b"secret"], [6], 1.0)
    eng.close()
    gen = _generation(path)
    with dbm.dumb.open(str(path / gen), "w") as db:
        db[b"m1.1"] = b"written, never committed"  # the next open compacts
    for name in path.iterdir():
        if name.name.startswith(gen):
            name.chmod(0o600)
    eng = DBMEngine(path)
    try:
        assert _generation(path) != gen
        assert [r.data for r in eng.peek("q", 5)] == [b"secret"]
        eng.append("q", [b"more"], [4], 1.0)  # dbm.dumb sets the mode on every write
    finally:
        eng.close()
    modes = {name.name: stat.S_IMODE(name.stat().st_mode) for name in path.iterdir()
             if name.name.startswith("gen-")}
    assert modes and set(modes.values()) == {0o600}, modes


def _break_index(path: Path) -> tuple[Path, Path]:
    """Make dbm.dumb's next index append fail (its .dir becomes a directory); returns what
    :func:`_mend_index` needs to put it back."""
    index = path / f"{_generation(path)}.dir"
    saved = index.with_name(index.name + ".saved")
    index.rename(saved)
    index.mkdir()
    return index, saved


def _mend_index(index: Path, saved: Path) -> None:
    index.rmdir()
    saved.rename(index)


@pytest.mark.parametrize("then", ["call again", "reopen"])
def test_dbm_take_that_failed_to_commit_has_not_happened(tmp_path: Path, then: str) -> None:
    path = tmp_path / "q.dbm"
    eng = DBMEngine(path)
    try:
        eng.append("q", [b"a", b"b", b"c"], [1, 1, 1], 1.0)
        broken = _break_index(path)
        with pytest.raises(spoolq.EngineError, match="take failed"):
            eng.take("q", 2, 2.0, None)
        _mend_index(*broken)
        if then == "reopen":
            eng.close()
            eng = DBMEngine(path)
        # The take raised: its records were delivered to no one, so they are still queued.
        assert eng.counts("q").ready == 3
        assert [r.data for r in eng.take("q", 5, 2.0, None)] == [b"a", b"b", b"c"]
    finally:
        eng.close()
    eng = DBMEngine(path)
    try:
        assert eng.counts("q").ready == 0
    finally:
        eng.close()


@pytest.mark.parametrize("target_exists", [True, False])
def test_dbm_new_queue_through_a_symlink_is_made_where_it_points(tmp_path: Path,
                                                                  target_exists: bool) -> None:
    target = tmp_path / "real.dbm"
    if target_exists:
        target.mkdir()  # an empty directory, as for a new queue
    link = tmp_path / "link.dbm"
    link.symlink_to(target)
    eng = DBMEngine(link)
    try:
        eng.append("q", [b"a"], [1], 1.0)
    finally:
        eng.close()
    assert link.is_symlink() and (target / "CURRENT").is_file()
    eng = DBMEngine(target)
    try:
        assert [r.data for r in eng.peek("q", 5)] == [b"a"]
    finally:
        eng.close()


CHURN = textwrap.dedent("""
    import sys, time
    from spoolq.engines import DBMEngine
    eng = DBMEngine(sys.argv[1])
    eng.append("keep", [b"kept"], [4], 1.0)
    print("ready", flush=True)
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:  # every round leaves enough dead keys for a compaction
        eng.append("churn", [b"x"] * 600, [1] * 600, 1.0)
        eng.take("churn", 600, 1.0, None)
    eng.close()
""")


def test_dbm_read_only_open_while_the_writer_compacts_reads_the_new_generation(
        tmp_path: Path) -> None:
    path = tmp_path / "q.dbm"
    DBMEngine(path).close()
    with subprocess.Popen([sys.executable, "-c", CHURN, str(path), "1.5"],
                          stdout=subprocess.PIPE, text=True) as writer:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        first, opened, failures = _generation(path), 0, []
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            try:
                eng = DBMEngine(path, read_only=True)
            except spoolq.EngineError as exc:
                failures.append(str(exc))
                continue
            try:
                assert [r.data for r in eng.peek("keep", 5)] == [b"kept"]
                opened += 1
            finally:
                eng.close()
        compacted = _generation(path) != first
        assert writer.wait(30) == 0
    assert compacted and opened
    assert not failures, f"{len(failures)} of {len(failures) + opened} opens failed: {failures[0]}"


def test_pickle_file_cut_short_inside_its_header_is_damaged_not_foreign(tmp_path: Path) -> None:
    path = tmp_path / "q.pickle"
    eng = PickleEngine(path)
    eng.append("q", [b"a"], [1], 1.0)
    eng.close()
    whole = path.read_bytes()
    for size in (1, len(whole) // 2):
        path.write_bytes(whole[:size])
        for read_only in (False, True):
            with pytest.raises(spoolq.CorruptError, match="damaged"):
                PickleEngine(path, read_only=read_only)
        assert path.read_bytes() == whole[:size]


@pytest.mark.parametrize("settle", ["ack", "release", "expire"])
def test_pickle_lease_an_earlier_version_gave_a_longer_owner_is_still_settled_by_it(
        tmp_path: Path, settle: str) -> None:
    path = tmp_path / "q.pickle"
    eng = PickleEngine(path)
    try:
        eng.append("q", [b"a", b"b"], [1, 1], 1.0)
        held = [(r.id, r.attempts) for r in eng.take("q", 2, 1.0, Lease("me", 100.0))]
    finally:
        eng.close()
    owner = "é" * 1000  # as a take before the limit stored it
    # Written back as a file of version 1 (the queue dict itself, no checksum to redo).
    whole = pickle.loads(pickle.loads(path.read_bytes())["body"])
    whole["meta"]["format_version"] = b"1"
    whole["queues"]["q"] = [(*r[:6], owner, r[7]) for r in whole["queues"]["q"]]
    path.write_bytes(pickle.dumps(whole, protocol=5))
    eng = PickleEngine(path)
    try:
        assert eng.owners("q") == {owner: 2}
        if settle == "ack":
            assert eng.ack("q", held, owner) == [1, 2]
            assert eng.counts("q") == (0, 0, 0, 0)
        elif settle == "release":
            assert eng.release("q", held, owner, not_before=0.0, max_attempts=None) == [1, 2]
            assert eng.counts("q") == (2, 0, 2, 2)
        else:
            assert eng.expire("q", 5.0, owners=[owner]) == 2
            assert eng.counts("q") == (2, 0, 2, 2)
    finally:
        eng.close()
    eng = PickleEngine(path)
    try:
        assert eng.owners("q") == {}
    finally:
        eng.close()


def _bytes_in(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir())


def test_dbm_files_stay_small_while_many_records_are_held_aside(tmp_path: Path) -> None:
    """Every call writes a state holding each record held aside (800 nacked with a delay:
    about 60 KB). The states a call replaces were reclaimed only once the dead keys
    outnumbered the live ones, whatever their size: 800 nacks and 800 puts left 64 MB."""
    path = tmp_path / "q.dbm"
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(list(range(800)))
        for msg in [q.lease(ttl=600) for _ in range(800)]:
            q.nack(msg, delay=600)
        for i in range(800):
            q.put(i)
        assert _bytes_in(path) < 24_000_000
    with spoolq.SyncQueue.create(path) as q:
        assert q.qsize() == 1600  # the 800 nacked wait for their delay
        assert q.get_many(1000, timeout=0.5) == list(range(800))
