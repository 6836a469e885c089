"""Another process holding an SQLite file's write lock, for tests of what waits for it, and
other programs' statements on the file."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap

from spoolq.engines import Counts
from spoolq.engines.sqlite import SQLiteEngine

REFUSE_TAKES = """CREATE TRIGGER refuse_takes BEFORE DELETE ON spoolq_records
    BEGIN SELECT RAISE(ABORT, 'takes refused'); END"""
"""A trigger that makes every take of the file fail, having changed nothing."""

_HOLDER = textwrap.dedent("""
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("COMMIT")
""")


def hold_lock(path: str, seconds: float) -> subprocess.Popen[str]:
    """A process holding ``path``'s write lock for ``seconds`` from when this returns
    (use it in a ``with`` block, which waits for it to end)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, path, str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


def run_sql(path: str | os.PathLike[str], sql: str) -> None:
    """Run ``sql`` on a connection of its own, as another program would."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(sql)
    finally:
        conn.close()


def file_counts(path: str | os.PathLike[str], queue: str = "default") -> Counts:
    """The counts the file holds for ``queue``, read by an engine of its own."""
    engine = SQLiteEngine(path)
    try:
        return engine.counts(queue)
    finally:
        engine.close()
