"""The ``spoolq`` command when the program reading its output stops early
(``spoolq dump FILE | head -c 1``): it ends as ``cat`` does, killed by SIGPIPE (status 141
in a shell), with nothing on stderr, and the queue file is left as it was. Real processes
and real pipes, with Python's stdout buffered and unbuffered (``PYTHONUNBUFFERED``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import spoolq
from tests.cli_support import ROOT, snapshot, unchanged

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGPIPE"), reason="no SIGPIPE here")

ITEMS = [{"n": n, "text": f"item {n} " + "abcdefghij" * 40} for n in range(1200)]
"""Enough for every command below to write well over a pipe's 64 KiB."""

BUFFERING = {"buffered": None, "unbuffered": "1"}


def _env(buffering: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    env.pop("PYTHONUNBUFFERED", None)
    if BUFFERING[buffering] is not None:
        env["PYTHONUNBUFFERED"] = BUFFERING[buffering]
    return env


def _start(args: list[str], buffering: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "spoolq", *args], env=_env(buffering),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _read_one_byte_and_go(proc: subprocess.Popen[bytes]) -> tuple[bytes, int, bytes]:
    """Read one byte of ``proc``'s output, close the pipe; its output byte, status and
    stderr."""
    assert proc.stdout is not None and proc.stderr is not None
    first = os.read(proc.stdout.fileno(), 1)
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    return first, proc.wait(timeout=60), err


@pytest.fixture(scope="module")
def queue_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A queue file of each engine the tests read: ``ITEMS`` in queue ``default``, a few
    in ``other``."""
    files = {}
    for engine in ("sqlite", "lmdb"):
        path = str(tmp_path_factory.mktemp("pipe") / f"jobs.{engine}")
        with spoolq.SyncQueue.create(path) as q:
            q.put_many(ITEMS)
        with spoolq.SyncQueue.create(path, name="other") as q:
            q.put_many(ITEMS[:5])
        files[engine] = path
    return files


COMMANDS = {
    "peek": ["peek", "{path}", "-n", "1200"],
    "peek --full": ["peek", "{path}", "-n", "1200", "--full"],
    "peek --json": ["peek", "{path}", "-n", "1200", "--json"],
    "dump": ["dump", "{path}"],
    "dump -o -": ["dump", "{path}", "-o", "-"],
    "dump --chunk 5000": ["dump", "{path}", "--chunk", "5000"],  # written in one piece
}
CASES = [("sqlite", command) for command in sorted(COMMANDS)] + [
    ("lmdb", "dump --chunk 5000"), ("lmdb", "peek --json")]


@pytest.mark.parametrize("buffering", sorted(BUFFERING))
@pytest.mark.parametrize(("engine", "command"), CASES)
def test_reader_going_away_ends_the_command_by_sigpipe(queue_files: dict[str, str],
                                                       engine: str, command: str,
                                                       buffering: str) -> None:
    queue_file = queue_files[engine]
    args = [a.format(path=queue_file) for a in COMMANDS[command]]
    whole = subprocess.run([sys.executable, "-m", "spoolq", *args], env=_env(buffering),
                           capture_output=True, timeout=60, check=False)
    assert whole.returncode == 0, whole.stderr
    assert len(whole.stdout) > 64 * 1024  # more than a pipe holds
    before = snapshot(queue_file)

    first, status, err = _read_one_byte_and_go(_start(args, buffering))

    assert first == whole.stdout[:1]
    assert status in (-signal.SIGPIPE, 128 + signal.SIGPIPE), (status, err)
    assert err == b""
    assert unchanged(queue_file, before)
    # Nothing was taken: every item is still there, in order.
    with spoolq.SyncQueue.create(queue_file) as q:
        assert q.qsize() == len(ITEMS)
        assert q.peek(len(ITEMS) + 1) == ITEMS


@pytest.mark.parametrize("buffering", sorted(BUFFERING))
def test_whole_output_is_written_when_read_to_the_end(queue_files: dict[str, str],
                                                      buffering: str) -> None:
    queue_file = queue_files["lmdb"]
    dumped = subprocess.run([sys.executable, "-m", "spoolq", "dump", queue_file],
                            env=_env(buffering), capture_output=True, timeout=60,
                            check=False)
    assert dumped.returncode == 0, dumped.stderr
    assert [json.loads(line) for line in dumped.stdout.splitlines()] == ITEMS
    peeked = subprocess.run([sys.executable, "-m", "spoolq", "peek", queue_file, "-n", "1200",
                             "--json"], env=_env(buffering), capture_output=True,
                            timeout=60, check=False)
    assert peeked.returncode == 0, peeked.stderr
    assert [r["item"] for r in json.loads(peeked.stdout)["records"]] == ITEMS


@pytest.mark.parametrize("buffering", sorted(BUFFERING))
def test_dump_to_a_file_is_not_affected_by_stdout_going_away(queue_files: dict[str, str],
                                                             buffering: str,
                                                             tmp_path: Path) -> None:
    queue_file = queue_files["sqlite"]
    out = tmp_path / "items.jsonl"
    before = snapshot(queue_file)
    proc = _start(["dump", queue_file, "-o", str(out)], buffering)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # gone before the command writes anything
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0, err
    assert [json.loads(line) for line in out.read_bytes().splitlines()] == ITEMS
    assert b"dumped 1200 item(s)" in err
    assert unchanged(queue_file, before)
