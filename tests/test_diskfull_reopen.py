"""Queue files of every file engine reopened on a full file system (a real tmpfs): a
queue closed, or a process killed (SIGKILL) while the disk was full, loses nothing a put
confirmed and keeps nothing of a put that failed; an open that cannot work on the full
disk says that the disk is full."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolq import EngineError, SyncQueue
from spoolq.engines import open_engine

from .test_diskfull_mount import fill, free, mounted, says_full

ENGINES = ["sqlite", "lmdb", "dbm", "pickle"]
ROOT = Path(__file__).resolve().parent.parent

_PUTTER = r"""
import sys
from spoolq import SyncQueue
q = SyncQueue.create(sys.argv[1])
failed = 0
i = 0
while failed < 5:
    try:
        q.put_many([f"{i}-{j}-" + "z" * 400 for j in range(5)])
        print("ok", i, flush=True)
    except Exception as exc:
        print("failed", i, type(exc).__name__, flush=True)
        failed += 1
    i += 1
print("done", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with mounted(tmp_path) as where:
        yield where


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _read_or_say_full(path: str) -> list[str] | None:
    """The items of the queue at ``path``; None when the open fails naming a full disk."""
    try:
        with SyncQueue[str].create(path) as q:
            return list(q.peek(100_000))
    except EngineError as exc:
        assert says_full(str(exc)), str(exc)
        return None


def test_a_process_killed_on_a_full_disk_keeps_every_confirmed_put(
        small_fs: Path, engine: str) -> None:
    path = str(small_fs / f"q.{engine}")
    fill(small_fs, 300_000)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    confirmed, failed = set(), set()
    with subprocess.Popen([sys.executable, "-c", _PUTTER, path], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                word, *rest = line.split()
                if word == "ok":
                    confirmed.add(int(rest[0]))
                elif word == "failed":
                    assert rest[1] == "EngineError", line
                    failed.add(int(rest[0]))
                else:
                    break
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert confirmed and len(failed) == 5
    for phase in ("full", "freed"):
        items = _read_or_say_full(path)
        free(small_fs)
        if items is None:
            assert phase == "full"
            continue
        batches = {int(item.split("-")[0]) for item in items}
        assert batches == confirmed, (phase, sorted(confirmed ^ batches)[:10])
        assert len(items) == 5 * len(confirmed)


@pytest.mark.parametrize("failed_put", [False, True])
def test_a_queue_on_a_full_disk_opens_or_says_why(
        small_fs: Path, engine: str, failed_put: bool) -> None:
    """The disk filled by another program after the queue was closed, or while it was
    open, with a put that failed."""
    path = str(small_fs / f"q.{engine}")
    items = [f"item-{i}-" + "y" * 300 for i in range(200)]
    with SyncQueue[str].create(path) as q:
        q.put_many(items)
        if failed_put:
            fill(small_fs)
            with pytest.raises(EngineError):
                q.put_many(["z" * 2000] * 100)
    fill(small_fs)
    try:
        reader = open_engine(path, read_only=True)
    except EngineError as exc:
        assert says_full(str(exc)), str(exc)
    else:
        try:
            assert len(reader.peek("default", 1000)) == 200
        finally:
            reader.close()
    assert _read_or_say_full(path) in (None, items)
    free(small_fs)
    assert _read_or_say_full(path) == items
