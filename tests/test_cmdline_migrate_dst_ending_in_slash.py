"""`spoolq migrate` into a new DST written with a trailing slash: a queue kept in a folder
(the dbm engine) is made there; one kept in a file cannot be, and the error names DST (not
the folder the copy was made in) and leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import spoolq
from spoolq.cli import ExitCode

from .cli_support import run


def _source(path: str) -> None:
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        q.put_many(["a", "b"])


@pytest.mark.parametrize("engine", ["sqlite", "lmdb", "pickle"])
def test_a_file_queue_named_with_a_trailing_slash_is_refused_naming_dst(
        tmp_path: Path, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _source(str(tmp_path / "src.sqlite"))
    monkeypatch.chdir(tmp_path)
    result = run("migrate", "src.sqlite", "new.q/", "--to-engine", engine)
    assert result.exit_code == ExitCode.FILE, result.output
    assert "new.q/" in result.output
    assert ".part" not in result.output and "Errno" not in result.output
    assert sorted(os.listdir(tmp_path)) == ["src.sqlite", "src.sqlite-shm", "src.sqlite-wal"]


def test_a_folder_queue_named_with_a_trailing_slash_is_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _source(str(tmp_path / "src.sqlite"))
    monkeypatch.chdir(tmp_path)
    result = run("migrate", "src.sqlite", "new.q/", "--to-engine", "dbm")
    assert result.exit_code == 0, result.output
    with spoolq.SyncQueue.create("new.q", name="jobs", engine="dbm") as q:
        assert q.peek(5) == ["a", "b"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".part")]
