"""A dbm queue whose CURRENT names its generation with bytes no generation name has (zeros a
power cut left, a path reaching out of the queue) is reported as damaged, and no file is
touched: it is neither opened elsewhere nor taken for a new queue."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import spoolq
from spoolq.engines import DBMEngine


def _queue(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "q.dbm"
    eng = DBMEngine(path)
    eng.append("q", [b"precious"], [8], 1.0)
    eng.close()
    return path, (path / "CURRENT").read_text().split()[1]


@pytest.mark.parametrize("name", [
    "gen-000\x00\x00\x00",  # a block of zeros
    "gen-00000\x001",
    "gen-../elsewhere",  # a path out of the queue directory
    "gen-abcdef",
    "gen-",
])
def test_a_current_naming_no_generation_is_damage_and_no_file_changes(
        tmp_path: Path, name: str) -> None:
    path, live = _queue(tmp_path)
    before = {n: (path / n).read_bytes() for n in os.listdir(path)}
    (path / "CURRENT").write_bytes(f"spoolq-dbm {name}\n".encode("latin-1"))
    before["CURRENT"] = (path / "CURRENT").read_bytes()
    for read_only in (False, True):
        with pytest.raises(spoolq.CorruptError, match="CURRENT"):
            DBMEngine(path, read_only=read_only)
        assert {n: (path / n).read_bytes() for n in os.listdir(path)} == before
    (path / "CURRENT").write_text(f"spoolq-dbm {live}\n")
    eng = DBMEngine(path)
    try:
        assert [r.data for r in eng.peek("q", 5)] == [b"precious"]
    finally:
        eng.close()



@pytest.mark.parametrize("doc", [
    {"commit": 2, "keys": 3, "next_id": 2, "next_number": 2, "meta": {}, "queues": []},
    {"commit": 2, "keys": 3, "next_id": 2, "next_number": 2, "meta": [], "queues": {}},
    [1, 2, 3],
], ids=["queues-a-list", "meta-a-list", "not-an-object"])
def test_a_newest_state_of_another_layout_is_damage(tmp_path: Path, doc: object) -> None:
    """A state whose checksum holds but whose layout is no state's (another program's, or
    damage the checksum missed) is reported, never a bare Python error."""
    import dbm.dumb
    import json
    import struct
    import zlib

    path, live = _queue(tmp_path)
    body = json.dumps(doc).encode()
    with dbm.dumb.open(str(path / live), "w") as db:
        db[b"s99"] = struct.pack(">I", zlib.crc32(body)) + body
    with pytest.raises(spoolq.SpoolqError):
        DBMEngine(path)
    with pytest.raises(spoolq.SpoolqError):
        DBMEngine(path, read_only=True)
