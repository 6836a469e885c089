"""The command line unpacks a compressed record within the raw size stored with it, as a
get does: a small record that inflates far beyond it (a compression bomb) is reported as
damaged without being unpacked, in little memory."""

from __future__ import annotations

import functools
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import spoolq
from spoolq.engines import open_engine

from .cli_support import ROOT

_BOMB_BYTES = 300_000_000
"""What the bomb inflates to: more than the 256 MiB spoolq ever compresses."""
_STORED_RAW = 1000
_MAX_RSS_KB = 160 * 1024
"""The most a command reading the bomb may hold: unpacked, it alone takes 256 MiB."""


@functools.cache
def _bomb_record() -> bytes:
    """A cbor+zlib record (header: version 1, cbor 2, zlib 2, CRC-32) of 300 MB of
    zeros, compressed a megabyte at a time so as not to hold them."""
    packer = zlib.compressobj(1)
    block = bytes(1 << 20)
    parts = [packer.compress(block) for _ in range(_BOMB_BYTES >> 20)]
    parts.append(packer.compress(bytes(_BOMB_BYTES - (_BOMB_BYTES >> 20 << 20))))
    parts.append(packer.flush())
    payload = b"".join(parts)
    head = bytes([1, 2, 2])
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def _queue_with_bomb(path: str) -> int:
    """Queue ``jobs`` of ``path``: a good item, then the bomb (stored raw size 1000);
    the bomb's id."""
    with spoolq.SyncQueue.create(path, name="jobs", compressor="zlib") as q:
        q.put({"n": 0})
    eng = open_engine(path)
    try:
        (ident,) = eng.append("jobs", [_bomb_record()], [_STORED_RAW], time.time())
    finally:
        eng.close()
    return int(ident)


def _spoolq(tmp: Path, *args: str) -> tuple[int, str, str, int]:
    """Run ``python -m spoolq ARGS``: exit status, stdout, stderr and the child's peak
    resident size in KiB (its output goes through files in ``tmp``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    out_path, err_path = tmp / "stdout", tmp / "stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "spoolq", *args], env=env,
                                stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # waited for here, not by Popen
    return (proc.returncode, out_path.read_text(), err_path.read_text(), usage.ru_maxrss)


def test_peek_reports_a_bomb_as_damaged_by_its_stored_raw_size(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    ident = _queue_with_bomb(path)
    code, out, err, rss = _spoolq(tmp_path, "peek", path, "-q", "jobs", "-n", "10", "--json")
    assert code == 0, err
    records = {rec["id"]: rec for rec in json.loads(out)["records"]}
    assert records[min(records)]["item"] == {"n": 0}
    bomb = records[ident]
    assert "item" not in bomb
    assert bomb["raw_bytes"] == _STORED_RAW
    assert f"more than {_STORED_RAW} bytes, the raw size stored with the record" \
        in bomb["note"], bomb["note"]
    assert rss < _MAX_RSS_KB, f"peek held {rss} KiB"


def test_peek_table_shows_the_bomb_damaged_in_little_memory(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    _queue_with_bomb(path)
    code, out, err, rss = _spoolq(tmp_path, "peek", path, "-q", "jobs", "-n", "10")
    assert code == 0, err
    assert "raw size stored" in " ".join(out.split()), out
    assert rss < _MAX_RSS_KB, f"peek held {rss} KiB"


def test_dump_refuses_the_bomb_by_its_stored_raw_size(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    ident = _queue_with_bomb(path)
    code, out, err, rss = _spoolq(tmp_path, "dump", path, "-q", "jobs", "--skip-bad")
    assert code == 1, err
    assert [json.loads(line) for line in out.splitlines()] == [{"n": 0}]
    assert f"record {ident}" in err
    assert f"more than {_STORED_RAW} bytes, the raw size stored with the record" \
        in " ".join(err.split()), err
    assert rss < _MAX_RSS_KB, f"dump held {rss} KiB"


def test_verify_reports_the_bomb_by_its_stored_raw_size(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    ident = _queue_with_bomb(path)
    code, out, err, rss = _spoolq(tmp_path, "verify", path, "--json")
    assert code == 1, err
    assert str(ident) in out
    assert "the raw size stored with the record" in out, out
    assert rss < _MAX_RSS_KB, f"verify held {rss} KiB"
