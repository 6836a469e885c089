"""A forked worker killed with SIGKILL at a moment of the test's choosing, and what it
reported before it died."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable


def killed_mid_work(work: Callable[..., None], after: float) -> list[str]:
    """Run ``work(out=fd)`` in a forked child that writes a line to ``fd`` as each step is
    done, SIGKILL it after ``after`` seconds, and return the whole lines it wrote (a line
    cut by the kill is no report)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            work(out=write_end)
        finally:
            os._exit(1)
    os.close(write_end)
    time.sleep(after)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as f:
        return f.read().decode().split("\n")[:-1]
