"""An SQLite queue file damaged so that text SQLite hands back is not UTF-8: in its schema,
opening it raises CorruptError naming the file as damaged (not a bare UnicodeDecodeError);
in a queue's name, so does listing the file's queues (not a plain EngineError)."""

from __future__ import annotations

from pathlib import Path

import pytest

import spoolq
from spoolq.engines import open_engine


def _queue(path: Path) -> bytearray:
    with spoolq.SyncQueue.create(str(path), name="jobs") as q:
        q.put_many([1, 2, 3])
    return bytearray(path.read_bytes())


def _damaged_schema(path: Path) -> None:
    data = _queue(path)
    at = data.index(b"UNIQUE", data.index(b"CREATE TABLE spoolq_queues")) + 6
    data[at:at + 3] = b"x\x90("  # a syntax error SQLite reports quoting the byte 0x90
    path.write_bytes(bytes(data))


def _damaged_name(path: Path) -> None:
    data = _queue(path)
    at = data.rindex(b"jobs")  # the name in the queue's row of spoolq_queues
    data[at:at + 4] = b"j\xffbs"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("read_only", [False, True])
def test_opening_a_file_whose_schema_is_not_utf8_says_it_is_damaged(
        tmp_path: Path, read_only: bool) -> None:
    path = tmp_path / "jobs.sqlite"
    _damaged_schema(path)
    before = path.read_bytes()
    with pytest.raises(spoolq.CorruptError, match="is damaged"):
        spoolq.SyncQueue.create(str(path), name="jobs", engine_options={"read_only": read_only})
    assert path.read_bytes() == before


@pytest.mark.parametrize("read_only", [False, True])
def test_listing_queues_whose_name_is_not_utf8_says_the_file_is_damaged(
        tmp_path: Path, read_only: bool) -> None:
    path = tmp_path / "jobs.sqlite"
    _damaged_name(path)
    engine = open_engine(str(path), read_only=read_only)
    try:
        with pytest.raises(spoolq.CorruptError, match="is damaged"):
            engine.queues()
    finally:
        engine.close()
