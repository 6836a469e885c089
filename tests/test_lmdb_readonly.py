"""LMDB queue files a user may read but not write, and lock files that cannot be used.

Every process that opens an LMDB queue with LMDB's lock writes the ``<path>-lock`` file.
A reader that cannot (the lock file or its directory is not writable, or is immutable,
or the lock path is a directory) reads without the lock while no other process has the
queue open; otherwise, and for writers, the error names the file at fault and says what
to do. The commands run in real child processes, as root without the capabilities that
ignore file permissions, so that permissions apply as they do to any other user.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import spoolq
from tests.cli_support import ROOT

pytestmark = pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")

ITEMS = [{"n": n} for n in range(30)]


def _as_plain_user() -> None:
    """Run as root without the capabilities that ignore file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return env


def spoolq_cmd(*args: str, plain: bool = True) -> subprocess.CompletedProcess[str]:
    """``spoolq ARGS`` in a child process, as a user whom file permissions bind
    (``plain``), or as this one."""
    return subprocess.run(
        [sys.executable, "-m", "spoolq", *args], capture_output=True, text=True, timeout=60,
        env=_env(), check=False,
        preexec_fn=_as_plain_user if plain and os.getuid() == 0 else None)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """A directory for the queue; its modes and attributes are undone afterwards."""
    path = tmp_path / "queues"
    path.mkdir()
    yield path
    subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True, check=False)
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def make_queue(folder: Path) -> Path:
    path = folder / "jobs.lmdb"
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(ITEMS)
    return path


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def check_reads(path: Path) -> None:
    """Every read-only command works and shows the whole queue."""
    info = spoolq_cmd("info", str(path), "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["queues"][0]["ready"] == len(ITEMS)
    peek = spoolq_cmd("peek", str(path), "-n", "100", "--json")
    assert peek.returncode == 0, peek.stderr
    assert [r["item"] for r in json.loads(peek.stdout)["records"]] == ITEMS
    dump = spoolq_cmd("dump", str(path))
    assert dump.returncode == 0, dump.stderr
    assert [json.loads(line) for line in dump.stdout.splitlines()] == ITEMS
    verify = spoolq_cmd("verify", str(path))
    assert verify.returncode == 0, verify.stdout + verify.stderr


# ---- readers ------------------------------------------------------------------------------

def test_a_file_and_lock_file_the_user_may_only_read_are_read(folder: Path) -> None:
    """As another user meets a queue file and lock file its owner made (0o644)."""
    path = make_queue(folder)
    lock = Path(f"{path}-lock")
    assert lock.exists()
    path.chmod(0o444)
    lock.chmod(0o444)
    before = contents(folder)
    check_reads(path)
    assert contents(folder) == before


def test_a_read_only_directory_with_a_lock_file_the_user_cannot_write(folder: Path) -> None:
    path = make_queue(folder)
    path.chmod(0o444)
    Path(f"{path}-lock").chmod(0o444)
    folder.chmod(0o555)
    before = contents(folder)
    check_reads(path)
    assert contents(folder) == before


@pytest.mark.skipif(os.getuid() != 0 or shutil.which("chattr") is None,
                    reason="chattr +i needs root")
@pytest.mark.parametrize("immutable", ["directory", "lock file"])
def test_an_immutable_directory_or_lock_file(folder: Path, immutable: str) -> None:
    """Even root cannot create or write a file there: the reader reads without the lock;
    a writer is told which file it cannot write."""
    path = make_queue(folder)
    lock = Path(f"{path}-lock")
    if immutable == "directory":
        lock.unlink()  # copied without it
    target = folder if immutable == "directory" else lock
    if subprocess.run(["chattr", "+i", str(target)], capture_output=True,
                      check=False).returncode != 0:
        pytest.skip(reason="this file system does not take chattr +i")
    before = contents(folder)
    check_reads(path)
    purge = spoolq_cmd("purge", str(path), "--yes", plain=False)
    assert purge.returncode == 3
    assert f"its lock file {lock} cannot be written (Operation not permitted)" in purge.stderr
    assert "Traceback" not in purge.stderr
    assert contents(folder) == before


def test_a_lock_path_that_is_a_directory(folder: Path) -> None:
    path = make_queue(folder)
    lock = Path(f"{path}-lock")
    lock.unlink()
    lock.mkdir()
    before = contents(folder)
    check_reads(path)
    purge = spoolq_cmd("purge", str(path), "--yes", plain=False)
    assert purge.returncode == 3
    assert f"its lock file {lock} is a directory: remove it" in purge.stderr
    assert contents(folder) == before
    assert lock.is_dir()


def test_a_file_the_user_cannot_read_is_an_error_naming_it(folder: Path) -> None:
    path = make_queue(folder)
    path.chmod(0o000)
    for command in (["info"], ["peek"], ["dump"]):
        result = spoolq_cmd(*command, str(path))
        assert result.returncode == 3, result.stdout
        assert result.stdout == ""  # never an empty queue
        assert (f"{path} cannot be opened to read (Permission denied): this needs read "
                "access to the file") in result.stderr


@contextmanager
def held_open(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the queue open for writing, as a running service does."""
    code = textwrap.dedent("""
        import sys, spoolq
        with spoolq.SyncQueue.create(sys.argv[1]) as q:
            print(q.qsize(), flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], env=_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == str(len(ITEMS))
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


def test_a_reader_that_cannot_write_the_lock_file_of_a_queue_in_use(folder: Path) -> None:
    """Without LMDB's lock, a reader would not stop a writer from reusing the pages it
    reads: while another process has the queue open, it is refused, with what to do."""
    path = make_queue(folder)
    lock = Path(f"{path}-lock")
    path.chmod(0o444)
    lock.chmod(0o444)
    with held_open(path):
        for command in (["info"], ["peek"], ["dump"]):
            result = spoolq_cmd(*command, str(path))
            assert result.returncode == 3, result.stdout
            assert result.stdout == ""
            assert (f"its lock file {lock} cannot be written (Permission denied): every "
                    "process that opens the queue records itself there, so reading it while "
                    "another process may have it open needs write access to it"
                    ) in result.stderr
    check_reads(path)  # once that process closed it


READER = textwrap.dedent("""
    import sys
    from spoolq.engines import LMDBEngine
    eng = LMDBEngine(sys.argv[1], read_only=True)
    print(eng.counts("default").ready, flush=True)
    sys.stdin.readline()
    try:
        print(len(eng.peek("default", 100)))
    except Exception as exc:
        print(type(exc).__name__, exc)
""")


def test_a_reader_without_the_lock_stops_when_another_process_opens_the_queue(
        folder: Path) -> None:
    path = make_queue(folder)
    path.chmod(0o444)
    Path(f"{path}-lock").chmod(0o444)
    plain = _as_plain_user if os.getuid() == 0 else None
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path)], env=_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              preexec_fn=plain)  # noqa: PLW1509 - it only calls prctl()
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == str(len(ITEMS))
    with held_open(path):
        out, err = reader.communicate("go\n", timeout=60)
    assert reader.returncode == 0, err
    assert out.startswith("EngineError ")
    assert "another process opened the queue, which this one reads without LMDB's lock" in out


# ---- writers ------------------------------------------------------------------------------

def test_writing_a_file_the_user_may_only_read(folder: Path) -> None:
    path = make_queue(folder)
    path.chmod(0o444)
    before = contents(folder)
    for command in (["purge", str(path), "--yes"], ["requeue", str(path), "--dead"]):
        result = spoolq_cmd(*command)
        assert result.returncode == 3, result.stdout
        assert (f"{path} cannot be opened to write (Permission denied): this needs write "
                "access to the file") in result.stderr
    load = subprocess.run(
        [sys.executable, "-m", "spoolq", "load", str(path), "-"], input='{"n": 99}\n',
        capture_output=True, text=True, timeout=60, env=_env(), check=False,
        preexec_fn=_as_plain_user if os.getuid() == 0 else None)
    assert load.returncode == 3
    assert f"{path} cannot be opened to write (Permission denied)" in load.stderr
    # The lock file, which the user may write, holds what LMDB's readers wrote there.
    assert path.read_bytes() == before[path.name]
    check_reads(path)


def test_writing_with_a_lock_file_the_user_cannot_write(folder: Path) -> None:
    path = make_queue(folder)
    lock = Path(f"{path}-lock")
    lock.chmod(0o444)
    result = spoolq_cmd("purge", str(path), "--yes")
    assert result.returncode == 3
    assert (f"{path}: its lock file {lock} cannot be written (Permission denied): every "
            "process that opens the queue records itself there, so writing needs write "
            "access to it") in result.stderr
    check_reads(path)
