"""Processes killed with SIGKILL inside a read transaction leave their slot in LMDB's
reader table, and the snapshot it names: LMDB reuses no page freed since. Only an open
of the file by a new process cleared such slots, so a long-running process putting and
getting on a queue that holds almost nothing grew the file by every byte it wrote (100 MB
for 4 MB of records put and taken); it now clears them once the file grows, and before
it grows the map."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from spoolq.engines import LMDBEngine


def _killed_in_reads(path: Path, n: int) -> None:
    """Start ``n`` processes that open the file, begin a read transaction and, once all of
    them are inside one, are killed with SIGKILL."""
    child = textwrap.dedent(f"""
        import sys, lmdb
        env = lmdb.Environment({str(path)!r}, subdir=False, max_dbs=8)
        txn = env.begin()
        print("reading", flush=True)
        sys.stdin.readline()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline() == "reading\n"
    finally:
        for p in procs:
            p.kill()
            p.communicate()


def test_slots_of_readers_killed_mid_read_do_not_keep_the_file_growing(
        tmp_path: Path) -> None:
    path = tmp_path / "q.lmdb"
    eng = LMDBEngine(path, sync=False, max_readers=8)
    try:
        eng.append("q", [b"first"], [5], 1.0)
        _killed_in_reads(path, 3)
        record = os.urandom(2000)
        for _ in range(2000):  # 4 MB put and taken
            eng.append("q", [record], [len(record)], 1.0)
            assert [r.data for r in eng.take("q", 1, 2.0, None)] in ([b"first"], [record])
        assert os.path.getsize(path) < 1 << 20
        assert eng.counts("q").ready == 1
    finally:
        eng.close()


def test_a_full_map_pinned_by_killed_readers_is_not_grown(tmp_path: Path) -> None:
    path = tmp_path / "q.lmdb"
    eng = LMDBEngine(path, sync=False, map_size=1 << 20)
    try:
        eng.append("q", [b"first"], [5], 1.0)
        _killed_in_reads(path, 2)
        record = os.urandom(2000)
        for _ in range(1000):  # 2 MB put and taken, in a map of 1 MB
            eng.append("q", [record], [len(record)], 1.0)
            eng.take("q", 1, 2.0, None)
        store = eng._entry.store  # type: ignore[union-attr]
        assert store._env.info()["map_size"] == 1 << 20  # type: ignore[attr-defined]
    finally:
        eng.close()
