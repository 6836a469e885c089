"""Opening an LMDB queue file again and again while another process keeps growing its
map: every open succeeds, read-only or writable, with a map far smaller than the file.
LMDB's environment itself begins a transaction as it opens, which met the grown map with
'MDB_MAP_RESIZED: Database contents grew beyond environment mapsize'."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spoolq.engines import LMDBEngine

ROOT = Path(__file__).resolve().parent.parent

_GROWER = textwrap.dedent("""
    import sys, time
    from spoolq.engines import LMDBEngine
    eng = LMDBEngine(sys.argv[1], map_size=65536)
    print("ready", flush=True)
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        eng.append("grown", [b"x" * 20000] * 4, [20000] * 4, 1.0)
    eng.close()
""")


@pytest.mark.parametrize("read_only", [True, False])
def test_opens_succeed_while_another_process_keeps_growing_the_map(
        tmp_path: Path, read_only: bool) -> None:
    path = tmp_path / "q.lmdb"
    eng = LMDBEngine(path, map_size=65536)
    eng.append("q", [b"a"], [1], 1.0)
    eng.close()
    grower = subprocess.Popen(
        [sys.executable, "-c", _GROWER, str(path), "4"], stdout=subprocess.PIPE, text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    failures: list[str] = []
    opens = 0
    try:
        assert grower.stdout is not None and grower.stdout.readline() == "ready\n"
        while grower.poll() is None:
            try:
                handle = LMDBEngine(path, map_size=4096, read_only=read_only)
            except Exception as exc:  # every failure is collected
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            try:
                assert handle.counts("q").ready == 1
            finally:
                handle.close()
            opens += 1
    finally:
        grower.wait(timeout=60)
        if grower.stdout is not None:
            grower.stdout.close()
    assert grower.returncode == 0
    assert opens > 50
    assert path.stat().st_size > 16 << 20  # the map grew many times past 4 KiB
    assert failures == [], f"{len(failures)} of {opens + len(failures)} opens failed: " \
                           f"{failures[0]}"
