"""A reap that waited once for the file's write lock (another process's long write
transaction), or for a process stopped meanwhile, does not put off the next reaps: only
reaps that are slow twice in a row are spaced out."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import spoolq
from spoolq.engines import Lease, open_engine

_HOLD_LOCK = """
import sys, time, lmdb
env = lmdb.open(sys.argv[1], subdir=False, max_dbs=16)
with env.begin(write=True):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
env.close()
"""


def test_a_reap_that_waited_once_for_the_write_lock_does_not_delay_the_next(
        tmp_path: Path) -> None:
    path = tmp_path / "q.lmdb"
    with spoolq.SyncQueue.create(path) as q:
        q.put("held")
    held = open_engine(path)
    try:  # leased by a process of another host: it comes back only when its lease ends
        held.take("default", 1, time.time(), Lease("elsewhere:1:2:x", time.time() + 3.0))
    finally:
        held.close()
    # Another process holds the write lock for 1.5 s: the reap that falls in that time
    # waits for it; the queue has no ready item, so reaps are its only writes.
    with spoolq.SyncQueue.create(path, poll_interval=0.05) as q, subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(path), "1.5"], stdout=subprocess.PIPE,
            text=True) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        start = time.monotonic()
        # The lease ends 3 s after it was taken: the reaps every 0.5 s return it soon
        # after; spaced 19 times the 1.5 s wait, it would come back after 28 s.
        assert q.get(timeout=10) == "held"
        assert time.monotonic() - start < 6.0
        assert holder.wait(timeout=30) == 0
