"""Shared code of the command-line tests: run the command, build queue files, snapshot them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

import spoolq
from spoolq.cli import cli
from spoolq.engines import Lease, open_engine

ROOT = Path(__file__).resolve().parent.parent
GONE_OWNER = f"{socket.gethostname()}:{2**22 + 1}:0:gone"
"""A lease owner on this host whose process cannot exist (above Linux's largest pid)."""
OTHER_HOST_OWNER = "elsewhere.invalid:1:0:remote"
"""A lease owner on another host: never declared dead."""


def run(*args: str, input: str | None = None) -> Result:
    """Run ``spoolq ARGS`` in this process; a crash inside a command fails the test."""
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def run_json(*args: str) -> Any:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def run_process(*args: str, input: str | None = None,
                stdin: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m spoolq ARGS`` in a child process with this checkout's sources."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "spoolq", *args], input=input, stdin=stdin,
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def fill(path: str) -> None:
    """Queue ``jobs``: items ``{"n": 2..24}`` ready and ``{"n": 0}``, ``{"n": 1}`` dead;
    queue ``other``: three strings."""
    with spoolq.SyncQueue.create(path, name="jobs", max_attempts=1) as q:
        q.put_many([{"n": n} for n in range(25)])
        q.nack(*q.lease_many(2, ttl=60))
    with spoolq.SyncQueue.create(path, name="other", serializer="json") as q:
        q.put_many(["a", "b", "c" * 500])


def lease_as(path: str, owner: str, n: int = 1, queue: str = "jobs") -> None:
    """Lease ``n`` items as ``owner`` for an hour, as a consumer process would."""
    eng = open_engine(path)
    try:
        now = time.time()
        assert len(eng.take(queue, n, now, Lease(owner, now + 3600))) == n
    finally:
        eng.close()


def items(path: str, queue: str = "jobs", *extra: str) -> list[Any]:
    """Every ready item of a queue, as ``peek --json`` shows them."""
    data = run_json("peek", path, "-q", queue, "-n", "100000", *extra)
    return [rec.get("item") for rec in data["records"]]


def snapshot(path: str) -> dict[str, bytes]:
    """The bytes of a queue file (every file, for a directory) and of an SQLite -wal."""
    found: dict[str, bytes] = {}
    if os.path.isdir(path):
        for root, _dirs, files in os.walk(path):
            for name in files:
                full = os.path.join(root, name)
                found[full] = Path(full).read_bytes()
    else:
        found[path] = Path(path).read_bytes()
    if os.path.exists(path + "-wal"):
        found[path + "-wal"] = Path(path + "-wal").read_bytes()
    return found


def unchanged(path: str, before: dict[str, bytes]) -> bool:
    """Whether every file of ``before`` still holds the same bytes.

    A read-only SQLite connection may create an empty ``-wal`` (and ``-shm``)
    next to a file that had none: SQLite needs them to read a WAL file, and
    they are not part of the queue's contents.
    """
    after = snapshot(path)
    return {name: after.get(name) for name in before} == before


def biggest_file(path: str) -> str:
    """The file to damage: the path itself, or the largest file inside a directory."""
    if not os.path.isdir(path):
        return path
    files = [os.path.join(root, f) for root, _dirs, names in os.walk(path) for f in names]
    return max(files, key=os.path.getsize)
