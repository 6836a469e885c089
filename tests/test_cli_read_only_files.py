"""Queue files the user may read but not write, in a folder the user may not write.

The read-only commands read them whole and change nothing; the writing commands
end with status 3 and a message, the file as it was. The commands run in real
child processes, as root without the capabilities that ignore file permissions,
so that permissions bind as they do any other user.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_support import ROOT, fill
from tests.conftest import DISK_ENGINES, ENGINE_SUFFIXES

pytestmark = pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")


def _as_plain_user() -> None:
    """Run as root without the capabilities that ignore file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def spoolq_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    """``spoolq ARGS`` in a child process bound by file permissions."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "spoolq", *args], capture_output=True, text=True, timeout=60,
        env=env, check=False, preexec_fn=_as_plain_user if os.getuid() == 0 else None)


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _make_read_only(folder: Path) -> None:
    for p in [*folder.rglob("*"), folder]:
        p.chmod(0o555 if p.is_dir() else 0o444)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """A folder for the queue; its modes are undone afterwards."""
    path = tmp_path / "queues"
    path.mkdir()
    yield path
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.mark.parametrize("engine", DISK_ENGINES)
def test_read_only_commands_read_a_read_only_queue_whole_and_change_nothing(
        folder: Path, engine: str) -> None:
    path = str(folder / f"jobs{ENGINE_SUFFIXES[engine]}")
    fill(path)
    _make_read_only(folder)
    before = _snapshot(folder)

    info = spoolq_cmd("info", path, "--json")
    assert info.returncode == 0, info.stderr
    assert {q["name"]: q["ready"] for q in json.loads(info.stdout)["queues"]} == {
        "jobs": 23, "other": 3}
    peek = spoolq_cmd("peek", path, "-q", "jobs", "-n", "100", "--json")
    assert peek.returncode == 0, peek.stderr
    assert [r["item"] for r in json.loads(peek.stdout)["records"]] == [
        {"n": n} for n in range(2, 25)]
    dump = spoolq_cmd("dump", path, "-q", "other")
    assert (dump.returncode, dump.stdout) == (0, '"a"\n"b"\n"' + "c" * 500 + '"\n')
    verify = spoolq_cmd("verify", path, "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert (report["ok"], report["records"], report["problems"]) == (True, 28, [])
    assert _snapshot(folder) == before


@pytest.mark.parametrize("engine", DISK_ENGINES)
@pytest.mark.parametrize("command", [["requeue", "-q", "jobs", "--dead"],
                                     ["purge", "-q", "jobs", "--yes"]])
def test_writing_commands_refuse_a_read_only_queue_and_change_nothing(
        folder: Path, engine: str, command: list[str]) -> None:
    path = str(folder / f"jobs{ENGINE_SUFFIXES[engine]}")
    fill(path)
    _make_read_only(folder)
    before = _snapshot(folder)
    done = spoolq_cmd(command[0], path, *command[1:])
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr and not done.stdout
    assert _snapshot(folder) == before


def test_verify_finds_damage_in_a_read_only_sqlite_file_in_a_read_only_folder(
        folder: Path) -> None:
    """The check of SQLite's own pages reads without the locks it cannot make there, and
    still finds what is wrong with them."""
    path = folder / "jobs.sqlite"
    fill(str(path))
    data = bytearray(path.read_bytes())
    pages = int.from_bytes(data[28:32], "big")  # the header's page count
    data[28:32] = (pages + 1).to_bytes(4, "big")
    page_size = int.from_bytes(data[16:18], "big")
    path.write_bytes(bytes(data) + bytes(page_size))  # a page no table uses
    _make_read_only(folder)
    done = spoolq_cmd("verify", str(path), "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["problems"] == [
        f"SQLite: *** in database main ***\nPage {pages + 1} is never used"]
    assert report["records"] == 28
