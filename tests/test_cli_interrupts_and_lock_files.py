"""The ``spoolq`` command on a file beside a queue, and interrupted while it changes one:
what it says must tell the user what the file is, and what was done before it stopped."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import spoolq
from spoolq.engines import dead_queue_name, open_engine

from .cli_support import ROOT, run_process


def _spoolq(*args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return subprocess.Popen([sys.executable, "-m", "spoolq", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _interrupt_at(proc: subprocess.Popen[bytes], wal: str, size: int) -> str:
    """Send Ctrl-C once ``wal`` grows past ``size`` bytes; the command's stderr, once it
    ended as interrupted."""
    deadline = time.monotonic() + 60
    while not (os.path.exists(wal) and os.path.getsize(wal) > size):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    assert text.endswith("Error: interrupted (Ctrl-C)\n"), text
    return text


def _counts(path: str, queue: str) -> spoolq.Counts:
    eng = open_engine(path, read_only=True)
    try:
        return eng.counts(queue)
    finally:
        eng.close()


# ---- a file that is no queue ----------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".dbm", ".pickle"])
@pytest.mark.parametrize("command", [["info"], ["peek"], ["requeue", "--dead"]])
def test_the_lock_file_beside_a_queue_is_named_as_such(
        tmp_path: Path, suffix: str, command: list[str]) -> None:
    """The empty lock file a dbm or pickle queue keeps beside it is no SQLite database:
    the message says it is an empty file, not a queue file, and names the queue."""
    path = str(tmp_path / f"jobs{suffix}")
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        q.put(1)
    lock = path + ".lock"
    assert os.path.getsize(lock) == 0
    result = run_process(*command, lock)
    assert result.returncode == 3
    assert result.stderr == (f"Error: {lock} is an empty file, not a spoolq queue file; it "
                             f"is the lock file of the queue {path}\n")
    assert os.path.getsize(lock) == 0  # left as it was


@pytest.mark.parametrize("suffix", [".dbm", ".pickle"])
def test_load_and_migrate_make_no_queue_in_the_lock_file_beside_a_queue(
        tmp_path: Path, suffix: str) -> None:
    """A load or migrate into a dbm or pickle queue's lock file, by a slip of the shell's
    completion, made an SQLite queue in it."""
    path = str(tmp_path / f"jobs{suffix}")
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        q.put(1)
    lock = path + ".lock"
    items = tmp_path / "items.jsonl"
    items.write_text('{"n": 1}\n')
    src = str(tmp_path / "src.sqlite")
    with spoolq.SyncQueue.create(src) as q:
        q.put(2)
    for command in (["load", lock, str(items)], ["migrate", src, lock]):
        result = run_process(*command)
        assert result.returncode == 3, result.stderr
        assert result.stderr == (f"Error: {lock} is an empty file, not a spoolq queue file; "
                                 f"it is the lock file of the queue {path}\n")
        assert os.path.getsize(lock) == 0
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        assert q.get_nowait() == 1


@pytest.mark.parametrize("name", ["notes.txt", "noext", "stray.lock"])
def test_any_other_empty_file_is_an_empty_sqlite_database(tmp_path: Path, name: str) -> None:
    """Only a queue's lock file is refused as such: another empty file is an SQLite
    database as SQLite makes it first (``mktemp``, a create cut short), which ``info``
    calls so and ``load`` makes a queue of."""
    path = tmp_path / name
    path.write_bytes(b"")
    result = run_process("info", str(path))
    assert result.returncode == 3
    assert result.stderr.startswith(f"Error: {path} is an empty SQLite database, not a "
                                    "spoolq queue file")
    items = tmp_path / "items.jsonl"
    items.write_text('{"n": 1}\n')
    loaded = run_process("load", str(path), str(items))
    assert loaded.returncode == 0, loaded.stderr
    with spoolq.SyncQueue.create(str(path), engine="sqlite") as q:
        assert q.get_nowait() == {"n": 1}


def test_an_empty_sqlite_file_keeps_its_message(tmp_path: Path) -> None:
    """A ``.sqlite`` path names an SQLite database: an empty one is said to be one."""
    path = tmp_path / "jobs.sqlite"
    path.write_bytes(b"")
    result = run_process("info", str(path))
    assert result.returncode == 3
    assert result.stderr.startswith(f"Error: {path} is an empty SQLite database, not a "
                                    "spoolq queue file")


# ---- interrupted while it changes the queue -------------------------------------------------

def _with_dead_letters(path: str, n: int) -> None:
    with spoolq.SyncQueue.create(path, name="jobs", compressor="none") as q:
        for start in range(0, n, 20_000):
            q.put_many([{"n": i, "pad": "p" * 40} for i in range(start, start + 20_000)])
    eng = open_engine(path)
    try:
        while True:
            ids = [rec.id for rec in eng.peek("jobs", 20_000)]
            if not ids:
                break
            eng.move("jobs", dead_queue_name("jobs"), ids)
    finally:
        eng.close()


def test_requeue_dead_interrupted_says_how_many_it_moved(tmp_path: Path) -> None:
    """Ctrl-C part way through ``requeue --dead``: each chunk moved stays moved, and a line
    before the error tells exactly how many, so the user knows what was done."""
    n = 100_000
    for attempt in range(3):  # the signal may land after the last move: then try again
        path = str(tmp_path / f"jobs{attempt}.sqlite")
        _with_dead_letters(path, n)
        size = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
        proc = _spoolq("requeue", path, "-q", "jobs", "--dead", "--chunk", "200")
        err = _interrupt_at(proc, path + "-wal", size + 400_000)
        moved = _counts(path, "jobs").ready
        assert moved + _counts(path, dead_queue_name("jobs")).ready == n
        if moved == n:
            continue
        said = re.search(r"jobs: (\d+) dead letter\(s\) were moved back to the queue before "
                         r"the requeue stopped\n", err)
        assert said is not None, err
        assert int(said.group(1)) == moved
        assert moved > 0
        return
    pytest.fail("every requeue ended before the Ctrl-C")


def test_purge_interrupted_as_it_deletes_finishes_and_says_so(tmp_path: Path) -> None:
    """Ctrl-C while the purge's one transaction runs: it is held back until the delete
    ends, and a line before the error says how many items were deleted."""
    path = str(tmp_path / "jobs.sqlite")
    n = 200_000
    with spoolq.SyncQueue.create(path, name="jobs", compressor="none") as q:
        for start in range(0, n, 20_000):
            q.put_many([{"n": i, "pad": "p" * 40} for i in range(start, start + 20_000)])
    eng = open_engine(path)
    eng.close()  # the WAL checkpointed: what grows it next is the purge
    size = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
    proc = _spoolq("purge", path, "-q", "jobs", "--yes")
    err = _interrupt_at(proc, path + "-wal", size + 100_000)
    assert _counts(path, "jobs").ready == 0
    assert f"jobs: deleted {n} item(s) before the purge stopped\n" in err


def test_compact_interrupted_as_it_rewrites_finishes_and_says_so(tmp_path: Path) -> None:
    """Ctrl-C during the VACUUM, which ends whole or not at all: it is held back until the
    rewrite ends, and a line before the error gives the sizes, so the user learns that the
    file was compacted."""
    path = str(tmp_path / "jobs.sqlite")
    with spoolq.SyncQueue.create(path, name="jobs", compressor="none") as q:
        for start in range(0, 300_000, 20_000):
            q.put_many([{"n": i, "pad": "p" * 40} for i in range(start, start + 20_000)])
    eng = open_engine(path)
    try:
        ids = [rec.id for rec in eng.peek("jobs", 100_000)]
        eng.move("jobs", "gone", ids)
        eng.purge("gone")
    finally:
        eng.close()
    proc = _spoolq("compact", path)
    err = _interrupt_at(proc, path + "-wal", 1_000_000)
    assert _counts(path, "jobs").ready == 200_000
    assert re.search(rf"{re.escape(path)}: \S+ \S+ -> \S+ \S+ \(VACUUM\) before the compact "
                     r"stopped\n", err), err


def test_ctrl_c_at_the_purge_question_ends_as_interrupted(tmp_path: Path) -> None:
    """click turns a Ctrl-C at its question into "Aborted!" and status 1."""
    path = str(tmp_path / "jobs.sqlite")
    with spoolq.SyncQueue.create(path) as q:
        q.put_many([1, 2])
    main, terminal = pty.openpty()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)}
    with subprocess.Popen([sys.executable, "-m", "spoolq", "purge", path], stdin=terminal,
                          stdout=subprocess.DEVNULL, stderr=terminal, env=env) as proc:
        os.close(terminal)
        said = b""
        try:
            while b"[y/N]" not in said:
                ready, _, _ = select.select([main], [], [], 30)
                assert ready, said
                said += os.read(main, 4096)
            # A Ctrl-C that lands between the prompt's write and the read that follows it
            # waits in CPython for the read to end: a user presses it again, and so does
            # this test, as long as the process runs.
            time.sleep(0.2)
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                proc.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(2)
            assert proc.wait(1) == 130
            with contextlib.suppress(OSError):  # the terminal closes with the process
                while chunk := os.read(main, 4096):
                    said += chunk
        finally:
            proc.kill()
            os.close(main)
    assert b"Error: interrupted (Ctrl-C)" in said and b"Aborted" not in said, said
    assert _counts(path, "default").ready == 2
