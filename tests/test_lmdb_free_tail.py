"""An LMDB file that ends before its last page number.

LMDB counts in that number pages a transaction took and freed again, which it never
writes, so a sound file can end before them; spoolq lengthens such a file (a writer,
after its commits and at open) and waits for a live writer to do so (a reader), while a
file cut short is still refused. The tests make such a file by raising the last page
number in its current meta page, as such a commit leaves it."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import spoolq

_META_LAST_PAGE = 136  # page header (16 bytes), magic, version, address, map size, 2 dbs
_PAGE = 4096


def _fill(path: str, n: int = 50) -> None:
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(range(n))


def _raise_last_page(path: str, by: int) -> int:
    """Raise the last page number of the file's current meta page by ``by``; return the
    size the file then needs."""
    with open(path, "r+b") as f:
        metas = []
        for page in (0, 1):
            f.seek(page * _PAGE + _META_LAST_PAGE)
            last, txnid = struct.unpack("<QQ", f.read(16))
            metas.append((txnid, page, last))
        _txnid, page, last = max(metas)
        f.seek(page * _PAGE + _META_LAST_PAGE)
        f.write(struct.pack("<Q", last + by))
    return (last + by + 1) * _PAGE


def test_a_writer_lengthens_a_file_ending_before_its_free_last_page(tmp_path: Path) -> None:
    path = str(tmp_path / "q.lmdb")
    _fill(path)
    needed = _raise_last_page(path, 1)
    assert os.path.getsize(path) < needed
    with spoolq.SyncQueue.create(path) as q:
        assert os.path.getsize(path) >= needed
        assert q.get_many(None) == list(range(50))
        q.put("more")
    with spoolq.SyncQueue.create(path, engine_options={"read_only": True}) as q:
        assert q.peek(5) == ["more"]


def test_a_reader_waits_for_the_writer_that_lengthens_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "q.lmdb")
    _fill(path)
    needed = _raise_last_page(path, 1)
    # Another process lengthens it a moment later, as a live writer does after its commit:
    # 0.15 s after it says it runs (a busy machine can take longer than the half second a
    # reader waits to start an interpreter), and the reader opens once it has said so.
    later = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time; print('up', flush=True); time.sleep(0.15); "
        "os.truncate(sys.argv[1], int(sys.argv[2]))"), path, str(needed)],
        stdout=subprocess.PIPE, text=True)
    assert later.stdout is not None
    assert later.stdout.readline() == "up\n"
    try:
        with spoolq.SyncQueue.create(path, engine_options={"read_only": True}) as q:
            assert q.qsize() == 50
    finally:
        later.communicate(timeout=10)


def test_a_reader_refuses_a_file_left_short_and_says_a_writer_mends_it(tmp_path: Path) -> None:
    path = str(tmp_path / "q.lmdb")
    _fill(path)
    _raise_last_page(path, 1)
    before = Path(path).read_bytes()
    with pytest.raises(spoolq.CorruptError, match="opening it writable mends"):
        spoolq.SyncQueue.create(path, engine_options={"read_only": True})
    assert Path(path).read_bytes() == before


def test_a_file_cut_short_is_still_refused_by_a_reader(tmp_path: Path) -> None:
    path = str(tmp_path / "q.lmdb")
    _fill(path, 2000)
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(spoolq.CorruptError, match="truncated"):
        spoolq.SyncQueue.create(path, engine_options={"read_only": True})
