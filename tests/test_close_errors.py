"""close() of a queue whose last write fails says so: the puts of durability "buffer"
had returned long before, and no one else hears that their items were lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


@pytest.mark.parametrize("durability", ["buffer", "commit"])
def test_close_raises_when_the_buffer_cannot_be_written(tmp_path: Path,
                                                        durability: str) -> None:
    """A real full disk, as the file-size limit makes it: the writes fail with EFBIG."""
    script = textwrap.dedent(f"""
        import os, resource, signal, spoolq
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        path = {str(tmp_path / "q.sqlite")!r}
        q = spoolq.SyncQueue.create(path, durability={durability!r}, flush_interval=60,
                                    compressor="none")
        q.put("small")
        if {durability!r} == "buffer":
            q.flush()
            q.put_many([os.urandom(1000).hex() for _ in range(200)])
        size = sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 4096, resource.RLIM_INFINITY))
        try:
            q.close()
        except spoolq.EngineError as exc:
            print("raised:", type(exc).__name__)
        else:
            print("closed")
        try:
            q.put("after")
        except spoolq.ClosedError:
            print("then closed")
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    expected = "raised: EngineError" if durability == "buffer" else "closed"
    assert done.stdout.splitlines() == [expected, "then closed"], (done.stdout, done.stderr)
