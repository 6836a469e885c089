"""The ``spoolq`` command on a file beside a queue, and interrupted while it changes one:
what it says must tell the user what the file is, and what was done before it stopped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import spoolq

from .cli_support import run_process

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


@pytest.mark.parametrize("name", ["notes.txt", "jobs.queue", "noext", "stray.lock"])
def test_an_empty_file_of_no_queue_suffix_is_an_empty_file(tmp_path: Path, name: str) -> None:
    """An empty file whose suffix names no engine is opened as SQLite, but to call it an
    empty SQLite database misleads: it is an empty file, and not a queue file."""
    path = tmp_path / name
    path.write_bytes(b"")
    for command in (["info"], ["requeue", "--dead"]):
        result = run_process(*command, str(path))
        assert result.returncode == 3
        assert result.stderr == f"Error: {path} is an empty file, not a spoolq queue file\n"
    assert path.read_bytes() == b""


def test_an_empty_sqlite_file_keeps_its_message(tmp_path: Path) -> None:
    """A ``.sqlite`` path names an SQLite database: an empty one is said to be one."""
    path = tmp_path / "jobs.sqlite"
    path.write_bytes(b"")
    result = run_process("info", str(path))
    assert result.returncode == 3
    assert result.stderr.startswith(f"Error: {path} is an empty SQLite database, not a "
                                    "spoolq queue file")
