"""A child forked from a process with a dbm queue open, which exits the ordinary way (the
interpreter then collects what the child inherited), leaves the parent's queue alone: it
used to write the dbm.dumb index it copied at the fork over the parent's, so the parent's
later puts lost their index entries, and once the parent was killed the queue no longer
opened (CorruptError: a record its newest state names is missing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spoolq.engines.dbm import DBMEngine

PARENT = textwrap.dedent("""
    import os, signal, sys, time
    from spoolq.engines.dbm import DBMEngine
    path, how = sys.argv[1:3]
    e = DBMEngine(path)
    e.append("q", [b"before-fork"], [1], time.time())
    pid = os.fork()
    if pid == 0:
        time.sleep(0.3)
        if how == "handle-dropped":
            del e
        sys.exit(0)  # the interpreter finalizes: what the child inherited is collected
    e.append("q", [b"after-fork"], [1], time.time())
    os.waitpid(pid, 0)
    e.append("q", [b"after-child"], [1], time.time())
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("how", ["exit", "handle-dropped"])
def test_a_child_exiting_keeps_the_parents_index(tmp_path: Path, how: str) -> None:
    path = tmp_path / "q.dbm"
    proc = subprocess.run([sys.executable, "-c", PARENT, str(path), how], capture_output=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                          timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    e = DBMEngine(path)
    try:
        assert [r.data for r in e.take("q", 10, time.time(), None)] == [
            b"before-fork", b"after-fork", b"after-child"]
    finally:
        e.close()
