"""Settings, engines and the wire protocol against values users already pass: limits
given as "as large as an int goes", and what recent checks must still let through."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from spoolq import SyncQueue
from spoolq.engines import SQLiteEngine
from tests.cli_support import ROOT


@pytest.mark.parametrize("limit", [2**31 - 1, sys.maxsize])
@pytest.mark.parametrize("engine", ["sqlite", "memory"])
def test_max_attempts_as_large_as_an_int_goes_is_no_limit(tmp_path: Path, engine: str,
                                                          limit: int) -> None:
    # INT32_MAX and sys.maxsize are the usual ways to say "practically never"; every engine
    # took them, and no record ever reaches that many attempts.
    path = ":memory:" if engine == "memory" else str(tmp_path / "q.sqlite")
    with SyncQueue.create(path, engine=engine, max_attempts=limit) as q:
        q.put(1)
        for _ in range(3):
            q.nack(q.lease(timeout=5))
        assert q.get_nowait() == 1
        assert q.peek(dead=True) == []


# ---- a file read without SQLite's locks, that nobody writes -------------------------------

_READER = textwrap.dedent("""
    import sys
    from spoolq.engines import SQLiteEngine

    eng = SQLiteEngine(sys.argv[1], read_only=True)
    for _ in range(2):
        try:
            print(eng.counts("q").ready, len(eng.peek("q", 100)), flush=True)
        except Exception as exc:
            print(type(exc).__name__, exc, flush=True)
        sys.stdin.readline()
    eng.close()
""")


def _without_root_powers() -> None:
    """Run as root without the capabilities that ignore file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _touch_atime(path: Path, tmp_path: Path) -> None:
    st = os.stat(path)  # a backup tool giving the file back the atime it had before reading
    os.utime(path, ns=(st.st_atime_ns - 10**9, st.st_mtime_ns))


def _same_mode(path: Path, tmp_path: Path) -> None:
    os.chmod(path, os.stat(path).st_mode)


def _hard_link(path: Path, tmp_path: Path) -> None:
    os.link(path, tmp_path / "snapshot.sqlite")  # a snapshot by hard links (rsnapshot, cp -al)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl, POSIX permissions")
@pytest.mark.parametrize("change", [_touch_atime, _same_mode, _hard_link])
def test_a_read_without_locks_goes_on_when_the_contents_did_not_change(
        tmp_path: Path, change: Callable[[Path, Path], None]) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "q.sqlite"
    with closing(SQLiteEngine(path)) as eng:
        eng.append("q", [b"a" * 100] * 30, [100] * 30, 0.0)
    env = dict(os.environ, PYTHONPATH=os.fspath(ROOT / "src"))
    plain = _without_root_powers if os.getuid() == 0 else None
    folder.chmod(0o555)
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", _READER, os.fspath(path)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            preexec_fn=plain)  # noqa: PLW1509 - it only calls prctl()
        assert child.stdout is not None and child.stdin is not None
        first = child.stdout.readline()
        try:
            assert first.split() == ["30", "30"], first + child.communicate(timeout=30)[1]
            change(path, tmp_path)
            out, err = child.communicate("go\ngo\n", timeout=30)
        finally:
            child.kill()
            child.wait()
    finally:
        folder.chmod(0o755)
    assert out.split() == ["30", "30"], out + err
