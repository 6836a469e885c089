"""Every slot of LMDB's reader table taken by live processes' reads: an open that finds none left
fails with an EngineError naming spoolq's max_readers option (LMDB's own text names a
parameter of the lmdb binding) and when a larger value takes effect."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import spoolq
from spoolq.engines import LMDBEngine


def test_an_open_finding_the_reader_table_full_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "q.lmdb"
    eng = LMDBEngine(path, max_readers=2)
    holder = textwrap.dedent(f"""
        import sys, lmdb
        env = lmdb.Environment({str(path)!r}, subdir=False, max_dbs=8)
        txn = env.begin()  # a long read, such as a walk through a large queue
        print("reading", flush=True)
        sys.stdin.readline()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "reading\n"
        opener = textwrap.dedent(f"""
            import spoolq
            from spoolq.engines import LMDBEngine
            try:
                LMDBEngine({str(path)!r}, max_readers=2)
            except spoolq.EngineError as exc:
                print(exc)
        """)
        out = subprocess.run([sys.executable, "-c", opener], check=True, capture_output=True,
                             text=True, timeout=60).stdout
        assert "max_readers" in out and "Environment(" not in out, out
        assert "no process has the file open" in out, out
    finally:
        for proc in procs:
            proc.communicate("\n", timeout=60)
        eng.close()
    with pytest.raises(spoolq.ConfigurationError):
        LMDBEngine(path, max_readers=1)
