"""The command line's writing commands on a full file system (a real tmpfs): each fails
with status 3 and a message naming the full disk, and leaves the files as they were: the
queue a compact rewrites stays whole, a migrate leaves no destination in part, a load
says how many items it stored and the queue holds those."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolq import SyncQueue

from .cli_support import run
from .test_diskfull_mount import fill, free, mounted, says_full

ENGINES = ["sqlite", "lmdb", "dbm", "pickle"]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with mounted(tmp_path, "8m") as where:
        yield where


def _make(path: str, n: int, taken: int = 0) -> list[str]:
    items = [f"item-{i}-" + os.urandom(150).hex() for i in range(n)]
    with SyncQueue[str].create(path) as q:
        q.put_many(items)
        for _ in range(taken):
            q.get()
    return items[taken:]


def _items(path: str) -> list[str]:
    with SyncQueue[str].create(path) as q:
        return list(q.peek(100_000))


def test_compact_on_a_full_disk_fails_clearly_and_keeps_the_queue(small_fs: Path) -> None:
    path = str(small_fs / "q.sqlite")
    left = _make(path, 3000, taken=2000)
    fill(small_fs, 20_000)
    result = run("compact", path)
    assert result.exit_code == 3, result.output
    assert says_full(result.output), result.output
    assert run("verify", path).exit_code in (0, 3)
    free(small_fs)
    assert run("verify", path).exit_code == 0
    assert _items(path) == left


@pytest.mark.parametrize("to", ENGINES)
def test_migrate_to_a_full_disk_fails_clearly_and_leaves_no_destination(
        tmp_path: Path, small_fs: Path, to: str) -> None:
    src = str(tmp_path / "src.sqlite")
    items = _make(src, 1500)
    fill(small_fs, 300_000)
    dst = small_fs / f"dst.{to}"
    result = run("migrate", src, str(dst))
    assert result.exit_code == 3, result.output
    assert says_full(result.output), result.output
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler"]
    assert _items(src) == items
    free(small_fs)
    assert run("migrate", src, str(dst)).exit_code == 0
    assert _items(str(dst)) == items


@pytest.mark.parametrize("engine", ENGINES)
def test_load_on_a_full_disk_says_how_many_it_stored(
        tmp_path: Path, small_fs: Path, engine: str) -> None:
    path = str(small_fs / f"q.{engine}")
    _make(path, 10)
    lines = tmp_path / "items.jsonl"
    lines.write_text("".join(json.dumps({"i": i, "pad": "p" * 300}) + "\n"
                             for i in range(20_000)))
    fill(small_fs, 1_000_000)
    result = run("load", path, str(lines), "--batch-size", "500")
    assert result.exit_code == 3, result.output
    assert says_full(result.output), result.output
    stored = int(result.stderr.split(" item(s) ")[0].rsplit(" ", 1)[1])
    free(small_fs)
    assert len(_items(path)) == 10 + stored
