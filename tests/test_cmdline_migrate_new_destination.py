"""`spoolq migrate` into a DST that does not exist yet, which it makes in a folder
``DST.<random>.part`` next to it and moves into place once whole.

A DST that could not even be opened there (a full disk, a file size limit) left that
folder behind with a part of a queue file in it; a DST in a directory that does not exist
failed naming the folder the user never gave; and a name of 242 to 255 bytes, which a file
may have, made a folder name longer than a file system allows.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

import spoolq
from spoolq.cli import ExitCode
from spoolq.engines import open_engine

from .cli_support import ROOT


def _source(path: str) -> None:
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        q.put_many([{"n": n, "pad": "x" * 200} for n in range(200)])


def _migrate(*args: str, cwd: Path, file_limit: int | None = None,
             ) -> subprocess.CompletedProcess[str]:
    def limit() -> None:  # files the migrate writes stop growing at file_limit bytes
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "spoolq", "migrate", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60, check=False,
                          preexec_fn=limit)


@pytest.mark.parametrize("suffix", [".sqlite", ".lmdb"])
def test_a_destination_that_cannot_be_opened_leaves_no_part_folder(tmp_path: Path,
                                                                   suffix: str) -> None:
    _source(str(tmp_path / "src.pickle"))  # read without writing a byte
    result = _migrate("src.pickle", f"dst{suffix}", cwd=tmp_path, file_limit=1024)
    assert result.returncode == ExitCode.FILE, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["src.pickle", "src.pickle.lock"]
    assert ".part" not in result.stderr, result.stderr
    again = _migrate("src.pickle", f"dst{suffix}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("suffix", [".sqlite", ".lmdb", ".dbm", ".pickle"])
def test_a_destination_in_a_missing_directory_is_named(tmp_path: Path, suffix: str) -> None:
    _source(str(tmp_path / "src.pickle"))
    result = _migrate("src.pickle", f"nowhere/dst{suffix}", cwd=tmp_path)
    assert result.returncode == ExitCode.FILE, result.stderr
    assert f"no directory {tmp_path / 'nowhere'}" in result.stderr, result.stderr
    assert ".part" not in result.stderr, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["src.pickle", "src.pickle.lock"]


@pytest.mark.parametrize(("suffix", "size"), [(".sqlite", 240), (".lmdb", 250)])
def test_a_destination_of_a_long_name_is_made(tmp_path: Path, suffix: str,
                                              size: int) -> None:
    _source(str(tmp_path / "src.pickle"))
    # As long as the file's own side files (-journal, -lock) let it be.
    name = "d" * (size - len(suffix)) + suffix
    result = _migrate("src.pickle", name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".part")]
    eng = open_engine(str(tmp_path / name), read_only=True)
    try:
        assert eng.counts("jobs").ready == 200
    finally:
        eng.close()
