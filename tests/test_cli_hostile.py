"""The ``spoolq`` command used as a careless or hostile user would: interrupted, fed odd
files and odd arguments, run beside programs that use the same queue."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import spoolq

from .cli_support import ROOT, run_process


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return env


def _spoolq(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "spoolq", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _ready(path: str, queue: str) -> int:
    info = run_process("info", path, "-q", queue, "--json")
    assert info.returncode == 0, info.stderr
    return int(json.loads(info.stdout)["queues"][0]["ready"])


def _interrupt_at(proc: subprocess.Popen[bytes], wal: str, size: int) -> bytes:
    """Send Ctrl-C once ``wal`` grows past ``size`` bytes (watched without a pause, so as
    to land in the write that grows it); the command's stderr, once it ended as
    interrupted."""
    deadline = time.monotonic() + 60
    while not (os.path.exists(wal) and os.path.getsize(wal) > size):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert b"Traceback" not in err
    return err


def test_load_interrupted_while_a_batch_commits_counts_that_batch(tmp_path: Path) -> None:
    """Ctrl-C that lands while a batch is being committed: the batch is stored, and the
    line that tells how many items were loaded (so that a load run again can skip
    them) counts it."""
    lines = tmp_path / "items.jsonl"
    lines.write_text("".join(json.dumps({"n": n, "pad": "p" * 40}) + "\n"
                             for n in range(20_000)))
    for attempt in range(3):  # the signal may land before the commit: then try again
        path = str(tmp_path / f"jobs{attempt}.sqlite")
        wal = path + "-wal"
        # A batch is about 1 MB of pages. SQLite writes about half of them to the WAL
        # while the rows go in, the rest as it commits: a WAL past 700 KB is that commit.
        proc = _spoolq("load", path, str(lines), "-q", "jobs", "--batch-size", "10000",
                       "--compressor", "none")
        err = _interrupt_at(proc, wal, 700_000)
        stored = _ready(path, "jobs")
        said = re.search(rb"(\d+) item\(s\) of \S+ were loaded before the load stopped", err)
        assert (0 if said is None else int(said.group(1))) == stored, err


def test_migrate_interrupted_into_an_existing_file_says_what_it_left_there(
        tmp_path: Path) -> None:
    """Ctrl-C during a migrate into a file that existed: the records copied so far stay
    there (the file is not the migrate's to remove), and a line on stderr says how many
    of which queue, since a migrate run again would refuse them, or double them with
    --append."""
    src = str(tmp_path / "src.sqlite")
    dst = str(tmp_path / "dst.sqlite")
    with spoolq.SyncQueue.create(src, name="jobs", compressor="none") as q:
        for start in range(0, 200_000, 20_000):
            q.put_many([{"n": n} for n in range(start, start + 20_000)])
    with spoolq.SyncQueue.create(dst, name="other") as q:
        q.put("kept")
    proc = _spoolq("migrate", src, dst, "--chunk", "500")
    err = _interrupt_at(proc, dst + "-wal", 300_000)
    copied = _ready(dst, "jobs")
    assert 0 < copied < 200_000
    assert _ready(dst, "other") == 1
    said = re.search(rb"(\d+) of the 200000 record\(s\) of 'jobs'", err)
    assert said is not None, err
    assert int(said.group(1)) == copied


HELD_BACK = """
import os, signal
from spoolq.cli._signals import sigint_deferred
try:
    with sigint_deferred():
        os.kill(os.getpid(), signal.SIGINT)  # held back: the block goes on
        print("went on", flush=True)
        raise OSError("the write failed")
except KeyboardInterrupt as exc:
    print("interrupted after", repr(exc.__cause__), flush=True)
"""


def test_a_ctrl_c_held_back_during_a_write_that_then_fails_still_interrupts() -> None:
    """A first Ctrl-C waits for the write under way; when that write fails, the command
    still ends as interrupted (status 130), not with the write's error alone."""
    out = subprocess.run([sys.executable, "-c", HELD_BACK], env=_env(), capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.splitlines() == ["went on",
                                       "interrupted after OSError('the write failed')"]
