"""`spoolq migrate` into a new file killed (SIGKILL) before it ends.

A Ctrl-C or an error removes the new DST, but a killed migrate cannot clean up: it left a
DST holding part of each queue, which looked like a whole copy to `info`, and which the
same migrate run again refused as a destination holding items (its `--append` then copied
those items twice). The copy is now made under a temporary name and DST appears only whole.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import spoolq
from spoolq.engines import open_engine

from .cli_support import ROOT, run_process

ITEMS = 40_000


def _source(path: str) -> None:
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        for start in range(0, ITEMS, 10_000):
            q.put_many([{"n": n, "pad": "x" * 100} for n in range(start, start + 10_000)])


def _copied(parts: list[str]) -> int:
    """Records the migrate wrote so far into whatever it is writing (0 if unreadable)."""
    for part in parts:
        try:
            eng = open_engine(part, read_only=True)
        except Exception:
            continue
        try:
            return eng.counts("jobs").ready
        except Exception:
            return 0
        finally:
            eng.close()
    return 0


@pytest.mark.parametrize("suffix", [".sqlite", ".dbm", ".pickle", ".lmdb"])
def test_a_killed_migrate_leaves_no_part_of_a_copy_as_dst(tmp_path: Path,
                                                          suffix: str) -> None:
    src = str(tmp_path / "src.sqlite")
    _source(src)
    dst = tmp_path / f"dst{suffix}"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "spoolq", "migrate", src, str(dst),
                             "--chunk", "50"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        # Killed once the copy is under way, as soon as some records are written.
        while proc.poll() is None and time.monotonic() < deadline:
            candidates = [str(dst)] + [str(p / dst.name) for p in tmp_path.iterdir()
                                       if p.is_dir() and p.name.startswith(dst.name + ".")]
            if _copied(candidates) > 0:
                break
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # 40,000 records 50 at a time take seconds to copy: one that ended was not tested.
    assert proc.returncode == -signal.SIGKILL, "the migrate ended before it could be killed"
    # No DST: the same migrate run again copies everything once.
    assert not dst.exists()
    again = run_process("migrate", src, str(dst))
    assert again.returncode == 0, again.stderr
    eng = open_engine(str(dst), read_only=True)
    try:
        assert eng.counts("jobs").ready == ITEMS
    finally:
        eng.close()
