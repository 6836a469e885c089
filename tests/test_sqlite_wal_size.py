"""How much the WAL of a SQLite queue file holds before it is copied into the file: 4 MiB,
whatever the file's page size, rather than SQLite's 1000 pages (1 MiB with spoolq's 1 KiB
pages, a checkpoint with its fsyncs every few hundred single puts)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import spoolq

MIB = 1 << 20


def _wal_after_single_puts(path: Path, n: int, **options: int) -> int:
    with spoolq.SyncQueue.create(path, durability="commit",
                                 engine_options=options or None) as q:
        for i in range(n):
            q.put(i)
        return os.path.getsize(f"{path}-wal")


def test_single_puts_grow_the_wal_past_a_thousand_pages(tmp_path: Path) -> None:
    # Each single put writes two 1 KiB pages (a records leaf and the counts) with their
    # frame headers: 700 puts pass 1000 pages, which used to start the WAL over at 1 MiB.
    size = _wal_after_single_puts(tmp_path / "q.sqlite", 700)
    assert size > 1.2 * MIB, size
    assert size < 4 * MIB + 64 * 1024


@pytest.mark.parametrize("page_size", [4096])
def test_a_file_of_larger_pages_keeps_as_much_wal(tmp_path: Path, page_size: int) -> None:
    # 4 KiB pages: 1000 pages are 4 MiB already; the WAL starts over near there (700 puts
    # write 5.6 MiB of frames), not at four times that.
    size = _wal_after_single_puts(tmp_path / "q.sqlite", 700, page_size=page_size)
    assert 3.9 * MIB < size < 4.4 * MIB, size


def test_the_queue_reopens_whole_after_a_large_wal(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    _wal_after_single_puts(path, 700)
    with spoolq.SyncQueue.create(path) as q:
        assert q.qsize() == 700
        assert q.get_many(700) == list(range(700))
