"""`spoolq migrate` from a queue that a running consumer and producer change meanwhile.

A worker taking one item from the head and putting one at the tail keeps the count the
same, so the copy's count check alone let a migrate end with status 0 while records read
page by page at offsets had moved under it: the destination lacked records the source held
all along (and held others twice as often as they were put, or out of the snapshot).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import spoolq
from spoolq.cli import ExitCode

from .cli_support import ROOT, run_process

FIRST_NEW = 10**6
"""The worker's items count up from here; the items put first are below it."""

_WORKER = """if True:
    import sys, spoolq
    q = spoolq.SyncQueue.create(sys.argv[1], name="jobs")
    n = int(sys.argv[2])
    print("ready", flush=True)
    while True:
        q.get(timeout=30)
        q.put({"n": n}); n += 1
"""


def _worker(path: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, path, str(FIRST_NEW)],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def _is_snapshot(ns: list[int]) -> bool:
    """Whether ``ns`` is the queue as it was at one moment: a run of the first items
    that reaches the last of them, then a run of the worker's from its first."""
    old = [n for n in ns if n < FIRST_NEW]
    new = [n for n in ns if n >= FIRST_NEW]
    return (ns == old + new and old == list(range(old[0], old[0] + len(old)))
            and (not old or old[-1] == 2999)
            and new == list(range(FIRST_NEW, FIRST_NEW + len(new))))


@pytest.mark.parametrize("rounds", [0, 1, 2])
def test_migrate_of_a_queue_in_use_is_a_whole_snapshot_or_refused(tmp_path: Path,
                                                                   rounds: int) -> None:
    src = str(tmp_path / "src.sqlite")
    dst = str(tmp_path / "dst.sqlite")
    with spoolq.SyncQueue.create(src, name="jobs") as q:
        q.put_many([{"n": n} for n in range(3000)])
    worker = _worker(src)
    try:
        result = run_process("migrate", src, dst, "--chunk", "50")
    finally:
        worker.kill()
        worker.wait()
        assert worker.stdout is not None
        worker.stdout.close()
    if result.returncode == 0:
        dumped = run_process("dump", dst, "-q", "jobs")
        assert dumped.returncode == 0, dumped.stderr
        ns = [json.loads(line)["n"] for line in dumped.stdout.splitlines()]
        assert _is_snapshot(ns), f"{len(ns)} items, not the queue at any one moment"
    else:
        assert result.returncode == ExitCode.PROBLEM, result.stderr
        assert "was another program using the files?" in result.stderr
        assert not os.path.exists(dst)
