"""Another process holding an SQLite file's write lock, for tests of what waits for it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
