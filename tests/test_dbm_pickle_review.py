"""The dbm and pickle engines: files beside a queue, damaged indexes, bad input, file modes
and calls that fail half-way."""

from __future__ import annotations

from pathlib import Path

import pytest

import spoolq
from spoolq.engines import DBMEngine


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
