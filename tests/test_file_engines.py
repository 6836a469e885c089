"""What is specific to the single-process file engines (dbm, pickle) and to read-only opens."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import spoolq
from spoolq import SyncQueue, open_engine
from spoolq.engines import DBMEngine, Lease, PickleEngine

from .conftest import queue_path

SINGLE_PROCESS = ["dbm", "pickle"]
FILE_ENGINES = ["lmdb", "dbm", "pickle"]

HOLDER = textwrap.dedent("""
    import sys, spoolq
    with spoolq.SyncQueue.create(sys.argv[1]) as q:
        q.put("held")
        print("ready", flush=True)
        sys.stdin.readline()
""")


def _snapshot(path: str) -> dict[str, bytes]:
    """Every file of a queue (a file or a directory) with its contents."""
    if os.path.isdir(path):
        return {name: Path(path, name).read_bytes() for name in sorted(os.listdir(path))}
    return {path: Path(path).read_bytes()}


@pytest.fixture
def holder(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A queue file held open by another process, which has put one item."""
    path = queue_path(tmp_path, request.param)
    with subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        try:
            yield path
        finally:
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.wait(30) == 0


@pytest.mark.parametrize("holder", SINGLE_PROCESS, indirect=True)
def test_second_process_is_refused_at_once_with_a_clear_error(holder: str) -> None:
    start = time.monotonic()
    with pytest.raises(spoolq.LockTimeout, match="in use by another process") as info:
        SyncQueue.create(holder)
    assert time.monotonic() - start < 2
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("holder", FILE_ENGINES, indirect=True)
def test_read_only_open_reads_while_another_process_writes(holder: str) -> None:
    eng = open_engine(holder, read_only=True)
    try:
        assert eng.counts("default").ready == 1
        assert len(eng.peek("default", 5)) == 1
    finally:
        eng.close()


@pytest.mark.parametrize("engine", SINGLE_PROCESS)
def test_lock_is_released_on_close(tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path, engine)
    SyncQueue.create(path).close()
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys, spoolq
        with spoolq.SyncQueue.create(sys.argv[1]) as q:
            q.put(1)
            print(q.qsize())
    """), path], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize("engine", FILE_ENGINES)
def test_read_only_changes_nothing_and_refuses_writes(tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path, engine)
    with SyncQueue.create(path) as q:
        q.put_many(["a", "b"])
    before = _snapshot(path)
    eng = open_engine(path, read_only=True)
    try:
        assert [r.id for r in eng.peek("default", 5)] == [1, 2]
        with pytest.raises(spoolq.EngineError, match="read-only"):
            eng.append("default", [b"x"], [1], 0.0)
        with pytest.raises(spoolq.EngineError, match="read-only"):
            eng.take("default", 1, time.time(), None)
    finally:
        eng.close()
    assert _snapshot(path) == before


@pytest.mark.parametrize("engine", FILE_ENGINES)
def test_read_only_open_of_a_missing_file_creates_nothing(tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path, engine)
    with pytest.raises(spoolq.FormatError, match="no such"):
        open_engine(path, read_only=True)
    assert not os.path.exists(path)


@pytest.mark.parametrize("engine", FILE_ENGINES)
def test_unknown_format_version_is_refused(tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path, engine)
    eng = open_engine(path)
    eng.set_meta("format_version", b"99")
    eng.close()
    with pytest.raises(spoolq.FormatError, match="format version 99"):
        SyncQueue.create(path)


@pytest.mark.parametrize("engine", FILE_ENGINES)
def test_random_bytes_file_is_refused_and_left_alone(tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path, engine)
    junk = os.urandom(8192)
    Path(path).write_bytes(junk)
    with pytest.raises(spoolq.FormatError, match="not a spoolq"):
        SyncQueue.create(path)
    assert Path(path).read_bytes() == junk


# ---- pickle -------------------------------------------------------------------------------


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_would_run_code_is_refused_unread(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"meta": _Hostile(marker), "next_id": 1, "queues": {}},
                                  protocol=5))
    with pytest.raises(spoolq.FormatError, match=r"(posix|os)\.system"):
        SyncQueue.create(path)
    assert not marker.exists()


@pytest.mark.parametrize(("damage", "error"), [
    (lambda blob: blob[: len(blob) // 2], spoolq.CorruptError),
    (lambda blob: blob + b"tail", spoolq.CorruptError),
    (lambda blob: b"", spoolq.CorruptError),
    (lambda blob: pickle.dumps(["a", "list"], protocol=5), spoolq.FormatError),
    (lambda blob: pickle.dumps({"meta": {}, "next_id": 1, "queues": {}}, protocol=5),
     spoolq.FormatError),
])
def test_damaged_or_foreign_pickle_is_never_an_empty_queue(tmp_path: Path, damage: object,
                                                           error: type[Exception]) -> None:
    path = tmp_path / "q.pickle"
    with SyncQueue.create(path) as q:
        q.put_many(list(range(20)))
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(error):
        SyncQueue.create(path)


def test_pickle_leftover_temporary_files_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "q.pickle"
    SyncQueue.create(path).close()
    leftover = tmp_path / "q.pickle.0123456789ab.tmp"
    leftover.write_bytes(b"half a file")
    with SyncQueue.create(path) as q:
        q.put(1)
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.pickle", "q.pickle.lock"]


# ---- dbm ----------------------------------------------------------------------------------


def _generation(path: Path) -> str:
    return (path / "CURRENT").read_text().split()[1]


def test_dbm_dead_records_are_reclaimed_by_a_new_generation(tmp_path: Path) -> None:
    path = tmp_path / "q.dbm"
    eng = DBMEngine(path)
    try:
        first = eng.append("keep", [b"keep-%d" % i for i in range(5)], [6] * 5, 1.0)
        held = eng.take("keep", 2, 1.0, Lease("me", 1e12))
        for _ in range(10):
            eng.append("churn", [b"x"] * 300, [1] * 300, 1.0)
            assert len(eng.take("churn", 300, 1.0, None)) == 300
        assert _generation(path) != "gen-000001"
        assert eng.ack("keep", [(r.id, r.attempts) for r in held], "me") == first[:2]
        assert [r.data for r in eng.peek("keep", 10)] == [b"keep-2", b"keep-3", b"keep-4"]
        assert eng.counts("keep") == (3, 0, 18, 18)
        assert eng.append("churn", [b"y"], [1], 1.0)[0] > first[-1] + 3000
    finally:
        eng.close()
    # dbm.dumb pads each value to 512 bytes: 3000 dead records alone would take 1.5 MB
    data = path / f"{_generation(path)}.dat"
    assert data.stat().st_size < 768 * 1024


def test_dbm_index_rewrite_cut_short_by_a_kill_is_repaired(tmp_path: Path) -> None:
    path = tmp_path / "q.dbm"
    with SyncQueue.create(path) as q:
        q.put_many(list(range(50)))
        q.get_many(5)
    gen = path / _generation(path)
    index = gen.with_suffix(".dir")
    whole = index.read_bytes()
    # dbm.dumb renames .dir to .bak, then writes a new .dir: killed before and during that
    for partial in (None, whole[: len(whole) // 2]):
        shutil.copy(index, gen.with_suffix(".bak"))
        index.unlink()
        if partial is not None:
            index.write_bytes(partial)
        with SyncQueue.create(path) as q:
            assert q.qsize() == 45
            assert q.peek(2) == [5, 6]
    with SyncQueue.create(path) as q:
        assert q.get_many(None) == list(range(5, 50))


def test_dbm_keys_an_interrupted_call_left_are_dropped(tmp_path: Path) -> None:
    import dbm.dumb

    path = tmp_path / "q.dbm"
    with SyncQueue.create(path) as q:
        q.put_many(["a", "b"])
    with dbm.dumb.open(str(path / _generation(path)), "w") as db:
        db[b"m1.2"] = b"written, never committed"
    with SyncQueue.create(path) as q:
        assert q.qsize() == 2
        q.put("c")
    with SyncQueue.create(path) as q:
        assert q.get_many(None) == ["a", "b", "c"]


def test_dbm_damaged_record_is_reported_by_name(tmp_path: Path) -> None:
    path = tmp_path / "q.dbm"
    with SyncQueue.create(path) as q:
        q.put_many(["good", "damaged " * 20, "after"])
    data = path / f"{_generation(path)}.dat"
    blob = bytearray(data.read_bytes())
    spot = blob.find(b"damaged")
    blob[spot:spot + 7] = b"DAMAGED"
    data.write_bytes(bytes(blob))
    with SyncQueue.create(path, compressor="none") as q:
        assert q.get() == "good"
        with pytest.raises(spoolq.CorruptError, match=r"record m1\.1 is damaged"):
            q.get()


def test_dbm_foreign_or_damaged_directory_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "photos.dbm"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(spoolq.FormatError, match="not a spoolq dbm queue"):
        SyncQueue.create(foreign)
    assert os.listdir(foreign) == ["holiday.jpg"]

    path = tmp_path / "q.dbm"
    with SyncQueue.create(path) as q:
        q.put(1)
    data = path / f"{_generation(path)}.dat"
    data.write_bytes(bytes(data.stat().st_size))
    with pytest.raises(spoolq.CorruptError, match="is damaged"):
        SyncQueue.create(path)
    with pytest.raises(spoolq.CorruptError, match="are damaged"):
        SyncQueue.create(path, engine_options={"recover": True})
    (path / "CURRENT").unlink()
    with pytest.raises(spoolq.CorruptError, match="CURRENT is missing"):
        SyncQueue.create(path)


def test_pickle_engine_instance_can_be_passed_directly(tmp_path: Path) -> None:
    eng = PickleEngine(tmp_path / "q.pickle")
    with SyncQueue.create(tmp_path / "ignored", engine=eng) as q:
        q.put("via instance")
        assert q.get() == "via instance"


@pytest.mark.parametrize("engine", SINGLE_PROCESS)
def test_a_handle_dropped_without_close_lets_go_of_the_file(tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path, engine)
    eng = open_engine(path)
    eng.append("q", [b"x"], [1], 1.0)
    del eng
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys, spoolq
        eng = spoolq.open_engine(sys.argv[1])
        print(eng.counts("q").ready)
        eng.close()
    """), path], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize("engine", FILE_ENGINES)
def test_a_missing_directory_is_an_error_not_created(tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path / "no" / "such", engine)
    with pytest.raises(spoolq.EngineError, match=r"No such file|no directory"):
        SyncQueue.create(path)
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("engine", FILE_ENGINES)
def test_handles_sharing_a_store_must_ask_for_the_same_durability(tmp_path: Path,
                                                                  engine: str) -> None:
    """Handles of one file in a process share one store, which flushes one way."""
    path = queue_path(tmp_path, engine)
    with SyncQueue.create(path, name="logs", durability="commit") as logs:
        with pytest.raises(spoolq.ConfigurationError, match="same durability"):
            SyncQueue.create(path, name="payments", durability="fsync")
        with SyncQueue.create(path, name="mail", durability="buffer") as mail:
            mail.put("m")  # "buffer" flushes as "commit" does: they share
        with SyncQueue.create(path, name="logs", engine_options={"read_only": True}) as reader:
            assert reader.qsize() == 0
        logs.put("still writable")
    with SyncQueue.create(path, name="payments", durability="fsync") as payments:
        payments.put("p")  # once the others are closed, the file opens with fsync
    with SyncQueue.create(path, name="mail") as mail:
        assert mail.get_nowait() == "m"


def test_dbm_damaged_newest_state_is_reported_and_recovered_only_when_asked(
        tmp_path: Path) -> None:
    path = tmp_path / "q.dbm"
    with SyncQueue.create(path) as q:
        q.put("first")
        q.put_many(list(range(200)))
    data = path / f"{_generation(path)}.dat"
    os.truncate(data, data.stat().st_size // 2)
    before = _snapshot(str(path))
    with pytest.raises(spoolq.CorruptError, match=r"newest state .* is damaged.*recover"):
        SyncQueue.create(path)
    assert _snapshot(str(path)) == before  # nothing repaired or compacted away
    with SyncQueue.create(path, engine_options={"recover": True}) as q:
        assert q.get_nowait() == "first"  # the state before the put_many
        assert q.qsize() == 0
    with pytest.raises(spoolq.ConfigurationError, match="recover"):
        SyncQueue.create(path, engine_options={"recover": "yes"})
