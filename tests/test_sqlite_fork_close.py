"""A process that opened an SQLite queue forks; the child writes to the same file through a
handle of its own while the parent closes its queue. The parent must not take itself for
the file's last user and remove the write-ahead log under the child: every put the child
made is in the file afterwards. Real processes, real forks."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from spoolq import SyncQueue

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")

_AFTER_CLOSE = 0.4  # seconds the child goes on putting once the parent closed


def _run_once(path: Path, inherited: bool) -> tuple[int, int]:
    """(items the child put, items the file holds besides the parent's one)."""
    q = SyncQueue.create(str(path))
    q.put("parent")
    ready_r, ready_w = os.pipe()
    closed_r, closed_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own handle on the same file
        code = 1
        try:
            os.close(ready_r)
            os.close(closed_w)
            os.close(done_r)
            child = q if inherited else SyncQueue.create(str(path))
            n = 0
            for _ in range(200):
                child.put(n)
                n += 1
            os.write(ready_w, b"x")
            os.read(closed_r, 1)  # the parent closed its queue
            until = time.monotonic() + _AFTER_CLOSE
            while time.monotonic() < until:
                child.put(n)
                n += 1
            child.close()
            os.write(done_w, str(n).encode())
            code = 0
        finally:
            os._exit(code)
    for fd in (ready_w, closed_r, done_w):
        os.close(fd)
    try:
        assert os.read(ready_r, 1) == b"x"
        q.close()
        os.write(closed_w, b"x")
        put = int(os.read(done_r, 64) or b"-1")
    finally:
        _, status = os.waitpid(pid, 0)
        for fd in (ready_r, closed_w, done_r):
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    with SyncQueue.create(str(path)) as again:
        held = again.qsize()
        items = again.get_many(held, block=False) if held else []
    assert items[:1] == ["parent"]
    return put, len(items) - 1


@pytest.mark.parametrize("inherited", [False, True], ids=["own handle", "inherited handle"])
def test_the_parents_close_keeps_the_childs_puts(tmp_path: Path, inherited: bool) -> None:
    for k in range(4):
        put, held = _run_once(tmp_path / f"q{k}.sqlite", inherited)
        assert held == put, f"run {k}: the child put {put} items, the file holds {held}"


if __name__ == "__main__":  # pragma: no cover - a quick look by hand
    import tempfile
    print(_run_once(Path(tempfile.mkdtemp()) / sys.argv[1], False))
