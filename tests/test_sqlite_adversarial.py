"""The SQLite engine against what a user may do to it: files other processes write while
one reads, and values of the wrong type or out of range given to its calls."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest

from spoolq.engines import SQLiteEngine
from tests.cli_support import ROOT


def _without_root_powers() -> None:
    """Run as root without the capabilities that ignore file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


# ---- a file read without SQLite's locks ---------------------------------------------------

READER = textwrap.dedent("""
    import sys
    from spoolq.engines import SQLiteEngine

    def show(eng):
        try:
            print(eng.counts("q").ready, len(eng.peek("q", 10_000)), flush=True)
        except Exception as exc:
            print(type(exc).__name__, exc, flush=True)

    eng = SQLiteEngine(sys.argv[1], read_only=True)
    show(eng)
    sys.stdin.readline()  # another process writes the file meanwhile
    show(eng)
    eng.close()
    show(SQLiteEngine(sys.argv[1], read_only=True))
""")


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_a_read_without_locks_refuses_a_file_written_since(tmp_path: Path) -> None:
    # In a directory it cannot write, a reader opens the file without SQLite's locks. A
    # process that may write there can open the queue meanwhile and change the file under
    # the reader, which then read stale pages mixed with new ones (a sound file reported
    # damaged, or the old counts): such a read must fail and say why, and a new open reads
    # the file as it is.
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "q.sqlite"
    with closing(SQLiteEngine(path)) as eng:
        eng.append("q", [b"a" * 100] * 300, [100] * 300, 0.0)
    env = dict(os.environ, PYTHONPATH=os.fspath(ROOT / "src"))
    plain = _without_root_powers if os.getuid() == 0 else None
    folder.chmod(0o555)
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", READER, os.fspath(path)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            preexec_fn=plain)  # noqa: PLW1509 - it only calls prctl()
        assert child.stdout is not None and child.stdin is not None
        first = child.stdout.readline()
    finally:
        folder.chmod(0o755)
    try:
        assert first.split() == ["300", "300"], first + child.communicate(timeout=30)[1]
        with closing(SQLiteEngine(path)) as eng:
            eng.take("q", 250, 0.0, None)
            eng.append("q", [b"b" * 100] * 20, [100] * 20, 0.0)
        out, err = child.communicate("go\n", timeout=30)
    finally:
        child.kill()
        child.wait()
    second, third = out.splitlines()
    assert second.startswith("EngineError"), second + err
    assert "written by another process" in second
    assert third.split() == ["70", "70"], third + err
