"""The single-process file engines (dbm, pickle): their file lock across fork, the numbers
they refuse, and the repair of a dbm.dumb index."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import spoolq
from spoolq import open_engine
from spoolq.engines.base import dead_queue_name

from .conftest import queue_path
from .test_cli_read_only_files import _as_plain_user

FORKING = ["os.fork", "multiprocessing"]
MAX_RAW_SIZE = (1 << 63) - 1  # SQLite's largest integer
MAX_ATTEMPTS = (1 << 30) - 1  # with room for as many deliveries again in every format

_PARENT = """
import multiprocessing, os, sys, time
import spoolq

up_read, up_write = os.pipe()

def child() -> None:
    os.write(up_write, b"up")  # past the fork hooks: the child runs its own code
    time.sleep(60)

q = spoolq.SyncQueue.create({path!r})
q.put_many(list(range(5)))
if {how!r} == "os.fork":
    pid = os.fork()
    if pid == 0:
        child()
        sys.exit(0)  # a normal exit, which runs every finalizer the child has
else:
    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    pid = process.pid
os.read(up_read, 2)
print(pid, flush=True)
q.put("after the fork")
if {then!r} == "wait for the child":
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    print("child gone", flush=True)
else:
    print("parent put", flush=True)
time.sleep(60)
"""


def _start_parent(path: str, how: str, then: str = "") -> tuple[subprocess.Popen[str], int]:
    """A process that opens the queue at ``path``, puts six items and forks a child that
    sleeps; returns it and the child's pid once both the child runs and the parent put."""
    script = textwrap.dedent(_PARENT).format(path=path, how=how, then=then)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    lines = [parent.stdout.readline(), parent.stdout.readline()]
    if not all(lines):
        parent.kill()
        raise AssertionError(parent.communicate(timeout=10)[1])
    assert lines[1] in ("parent put\n", "child gone\n"), lines
    return parent, int(lines[0])


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


@pytest.mark.parametrize("how", FORKING)
@pytest.mark.parametrize("engine", ["dbm", "pickle", "sqlite", "lmdb"])
def test_a_queue_opens_at_once_when_its_process_was_killed_and_a_forked_child_lives_on(
        tmp_path: Path, engine: str, how: str) -> None:
    """The child inherited the descriptor of the parent's lock: the lock stayed held until
    the child ended, and every open of the queue raised LockTimeout meanwhile."""
    path = queue_path(tmp_path, engine)
    parent, child = _start_parent(path, how)
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        os.kill(child, 0)  # still alive
        started = time.monotonic()
        with spoolq.SyncQueue.create(path) as q:
            assert q.get_many(timeout=1) == [0, 1, 2, 3, 4, "after the fork"]
        assert time.monotonic() - started < 5
    finally:
        _kill(parent.pid)
        _kill(child)
        parent.communicate(timeout=10)


@pytest.mark.parametrize("then", ["", "wait for the child"])
@pytest.mark.parametrize("engine", ["dbm", "pickle"])
def test_the_parent_keeps_its_lock_while_its_forked_child_lives_and_after_it_ended(
        tmp_path: Path, engine: str, then: str) -> None:
    """What a forked child does with the lock it inherited must never free the parent's."""
    path = queue_path(tmp_path, engine)
    parent, child = _start_parent(path, "os.fork", then)
    try:
        with pytest.raises(spoolq.LockTimeout):
            spoolq.SyncQueue.create(path)
    finally:
        _kill(parent.pid)
        _kill(child)
        parent.communicate(timeout=10)


@pytest.mark.parametrize("raw", [-1, 1 << 63, 1 << 64])
@pytest.mark.parametrize("engine", ["dbm", "pickle"])
def test_a_raw_size_out_of_range_is_refused_naming_it_and_nothing_changes(
        tmp_path: Path, engine: str, raw: int) -> None:
    """dbm raised struct.error ("argument out of range", "int too large to convert") for
    what its records cannot hold, and stored 2**63, which SQLite refuses; pickle stored
    every one of them."""
    path = queue_path(tmp_path, engine)
    eng = open_engine(path)
    try:
        eng.append("q", [b"a", b"b"], [1, 1], 1.0)
        with pytest.raises(ValueError, match=f"raw size must be from 0 to {MAX_RAW_SIZE}"):
            eng.append("q", [b"x", b"y"], [1, raw], 1.0)
        [taken] = eng.take("q", 1, 2.0, None)
        with pytest.raises(ValueError, match=f"raw size must be from 0 to {MAX_RAW_SIZE}"):
            eng.restore("q", [taken._replace(raw_size=raw)])
        assert eng.counts("q") == (1, 0, 1, 1)
        eng.restore("q", [taken])
    finally:
        eng.close()
    eng = open_engine(path)
    try:
        assert [(r.data, r.raw_size) for r in eng.peek("q", 5)] == [(b"a", 1), (b"b", 1)]
        assert eng.counts("q") == (2, 0, 2, 2)
    finally:
        eng.close()


@pytest.mark.parametrize("attempts", [-1, 1 << 30, 1 << 32, 1 << 63])
@pytest.mark.parametrize("engine", ["dbm", "pickle"])
def test_attempts_out_of_range_in_a_restore_are_refused_naming_them(
        tmp_path: Path, engine: str, attempts: int) -> None:
    path = queue_path(tmp_path, engine)
    eng = open_engine(path)
    try:
        eng.append("q", [b"a", b"b"], [1, 1], 1.0)
        [taken] = eng.take("q", 1, 2.0, None)
        with pytest.raises(ValueError, match=f"attempts must be from 0 to {MAX_ATTEMPTS}"):
            eng.restore("q", [taken._replace(attempts=attempts)])
        assert [r.data for r in eng.peek("q", 5)] == [b"b"]
        assert eng.counts("q") == (1, 0, 1, 1)
    finally:
        eng.close()


@pytest.mark.parametrize("engine", ["dbm", "pickle", "sqlite", "lmdb"])
def test_the_largest_raw_size_and_attempts_are_stored_and_delivered_again(
        tmp_path: Path, engine: str) -> None:
    """A record restored with the largest attempts was then refused by every lease on lmdb
    (struct.error) and stuck in the dbm queue at max_attempts: one delivery more did not fit."""
    path = queue_path(tmp_path, engine)
    eng = open_engine(path)
    try:
        eng.append("q", [b"a"], [MAX_RAW_SIZE], 1.0)
        [taken] = eng.take("q", 1, 2.0, None)
        eng.restore("q", [taken._replace(attempts=MAX_ATTEMPTS)])
    finally:
        eng.close()
    eng = open_engine(path)
    try:
        [rec] = eng.peek("q", 5)
        assert (rec.raw_size, rec.attempts) == (MAX_RAW_SIZE, MAX_ATTEMPTS)
        [leased] = eng.take("q", 1, 3.0, spoolq.engines.Lease("me", 100.0))
        assert leased.attempts == MAX_ATTEMPTS + 1
        assert eng.release("q", [(leased.id, leased.attempts)], "me", not_before=0.0,
                           max_attempts=3, reason="nacked") == [leased.id]
        assert eng.counts(dead_queue_name("q")).ready == 1
    finally:
        eng.close()


def _dumb_files(path: Path) -> tuple[Path, Path]:
    """The .dir index and the .bak of the live generation of the dbm queue at ``path``."""
    generation = (path / "CURRENT").read_text().split()[1]
    return path / f"{generation}.dir", path / f"{generation}.bak"


@pytest.mark.parametrize("damage", ["lines that are not an index", "entries that disagree"])
def test_a_damaged_dbm_index_backup_never_replaces_a_readable_index(tmp_path: Path,
                                                                    damage: str) -> None:
    """A .bak with more lines than .dir was taken for the index of a rewrite cut short: it
    replaced the good .dir, the open then failed on its damaged lines, and the index of
    every record was gone."""
    path = tmp_path / "q.dbm"
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(list(range(20)))
    index, backup = _dumb_files(path)
    good = index.read_bytes()
    assert backup.exists()
    if damage == "lines that are not an index":
        backup.write_bytes(good + b"\x00\x17garbage\n" * 3)
    else:  # the first record's entry names the place of the second
        first, second = [line for line in good.splitlines() if line.startswith(b"'m")][:2]
        wrong = first.split(b",")[0] + b"," + second.split(b",", 1)[1]
        backup.write_bytes(good.replace(first, wrong) + b"'x9.0', (0, 10)\n")
    with spoolq.SyncQueue.create(path) as q:
        assert q.get_many(None) == list(range(20))
    assert _dumb_files(path)[0].read_bytes() != b""


def test_a_dbm_index_cut_short_is_still_repaired_from_an_intact_backup(tmp_path: Path) -> None:
    """What the repair is for: a kill while dbm.dumb rewrote .dir, whose .bak is whole."""
    path = tmp_path / "q.dbm"
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(list(range(20)))
    index, backup = _dumb_files(path)
    good = index.read_bytes()
    backup.write_bytes(good)
    index.write_bytes(good[:len(good) // 2 + 3])  # a torn last line
    with spoolq.SyncQueue.create(path) as q:
        assert q.get_many(None) == list(range(20))


def test_a_dbm_open_that_fails_on_the_live_generation_leaves_the_others(tmp_path: Path) -> None:
    """A writable open removed every generation but the live one before it loaded that one:
    when the live one turned out damaged, the older generation a compaction killed after
    switching had left (a copy of the queue a moment before) was gone with the rest."""
    path = tmp_path / "q.dbm"
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(list(range(5)))
    for suffix in (".dat", ".dir", ".bak"):
        shutil.copy(path / f"gen-000001{suffix}", path / f"gen-000002{suffix}")
    (path / "CURRENT").write_text("spoolq-dbm gen-000002\n")
    index = (path / "gen-000002.dir").read_text(encoding="latin-1")
    newest = max((line for line in index.splitlines() if line.startswith("'s")),
                 key=lambda line: int(line.split("'")[1][1:]))
    where = int(newest.split("(")[1].split(",")[0])
    data = bytearray((path / "gen-000002.dat").read_bytes())
    data[where + 20] ^= 0xFF  # the newest state of the live generation is damaged
    (path / "gen-000002.dat").write_bytes(bytes(data))
    before = sorted(os.listdir(path))
    with pytest.raises(spoolq.CorruptError, match="newest state"):
        spoolq.SyncQueue.create(path)
    assert sorted(os.listdir(path)) == before
    # What was kept is the queue as it was: put it back in place and it opens whole.
    (path / "CURRENT").write_text("spoolq-dbm gen-000001\n")
    with spoolq.SyncQueue.create(path) as q:
        assert q.get_many(None) == list(range(5))
    assert not any(name.startswith("gen-000002") for name in os.listdir(path))


@pytest.mark.parametrize("engine", ["dbm", "pickle"])
def test_a_lock_file_the_user_cannot_write_is_named_as_one_to_open(
        tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path, engine)
    with spoolq.SyncQueue.create(path) as q:
        q.put(1)
    os.chmod(path + ".lock", 0o444)
    child = subprocess.run(
        [sys.executable, "-c", "import spoolq, sys; spoolq.SyncQueue.create(sys.argv[1])", path],
        capture_output=True, text=True, timeout=60, check=False,
        preexec_fn=_as_plain_user if os.getuid() == 0 else None)
    assert child.returncode != 0
    assert f"cannot open the lock file {path}.lock" in child.stderr, child.stderr
    with spoolq.SyncQueue.create(path) as q:  # the queue as it was
        assert q.get_nowait() == 1
