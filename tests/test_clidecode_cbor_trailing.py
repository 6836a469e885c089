"""What docs/api.md says of a cbor record whose payload has bytes after its item: the
item is read and the bytes after it are not looked at, by a get and by the command line
alike. (Finding them would cost every get of a small item a third to two thirds more
cbor decoding time: see the measurement in the docs.)"""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import cbor2

import spoolq
from spoolq.engines import open_engine

from .cli_support import run, run_json


def _record(payload: bytes) -> bytes:
    """A record of ``payload`` as cbor, uncompressed (header: version 1, cbor 2, none 0,
    CRC-32)."""
    head = bytes([1, 2, 0])
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def test_bytes_after_a_cbor_item_are_not_looked_at(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path, name="jobs", compressor="none") as q:
        q.put({"n": 0})
    payload = cbor2.dumps({"n": 1}) + b"\xff and bytes after it"
    eng = open_engine(path)
    try:
        eng.append("jobs", [_record(payload)], [len(payload)], time.time())
    finally:
        eng.close()
    assert [r.get("item") for r in run_json("peek", path, "-q", "jobs")["records"]] == [
        {"n": 0}, {"n": 1}]
    checked = run("verify", path)
    assert checked.exit_code == 0, checked.output
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        assert [q.get_nowait(), q.get_nowait()] == [{"n": 0}, {"n": 1}]
        assert q.stats["dead"] == 0
