"""The ``spoolq`` command's tables at the width of a pipe, and ``dump --skip-bad`` on a
dbm queue with a damaged record."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import spoolq

from .cli_support import ROOT

# An owner as long as the ones spoolq writes (host, pid, start time, namespace, boot id).
LONG_OWNER_SCRIPT = """
import os, sys, spoolq
q = spoolq.SyncQueue.create(sys.argv[1], name="jobs")
q.lease_many(2, ttl=3600)
os.kill(os.getpid(), 9)
"""


def _spoolq(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m spoolq ARGS`` with stdout a pipe and no COLUMNS: rich's 80 columns."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "spoolq", *args], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


def _leased_by_a_killed_worker(path: str) -> str:
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        q.put_many([{"n": n} for n in range(5)])
    subprocess.run([sys.executable, "-c", LONG_OWNER_SCRIPT, path], check=False, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    result = _spoolq("info", path, "--json")
    assert result.returncode == 0, result.stderr
    owners = json.loads(result.stdout)["queues"][0]["lease_owners"]
    assert len(owners) == 1
    owner: str = owners[0]["owner"]
    assert len(owner) > 40, owner  # wider than the docs' example, as spoolq writes them
    return owner


def test_peek_leased_keeps_every_column_and_the_whole_owner_in_80_columns(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    owner = _leased_by_a_killed_worker(path)
    result = _spoolq("peek", path, "-q", "jobs", "--leased")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()[1:]
    assert header.split() == ["id", "age", "tries", "size", "owner", "process", "left", "item"]
    assert len(rows) == 2
    for row in rows:
        assert owner in row
        assert " gone " in row
        assert '{"n":' in row


def test_info_shows_a_long_owner_on_one_line(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    owner = _leased_by_a_killed_worker(path)
    result = _spoolq("info", path)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if owner in line], result.stdout


def test_a_long_title_is_not_broken_at_the_width_of_the_table(tmp_path: Path) -> None:
    src = str(tmp_path / "q.sqlite")
    dst = str(tmp_path / "a-destination-with-a-rather-long-name.sqlite")
    with spoolq.SyncQueue.create(src, name="jobs") as q:
        q.put(1)
    result = _spoolq("migrate", src, dst)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].rstrip() == f"{src} -> {dst}"
    result = _spoolq("verify", dst)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].rstrip() == f"{dst} (sqlite)"


def test_a_long_queue_name_stays_on_one_line_in_every_table(tmp_path: Path) -> None:
    """Wider than the pipe's 80 columns, a table is laid out as wide as its cells need:
    rich took the width a size (``21 B``) could be broken to from the widest column,
    the queue name, and put its last character on a line of its own."""
    path = str(tmp_path / "q.sqlite")
    name = "a" * 255
    with spoolq.SyncQueue.create(path, name=name) as q:
        q.put({"n": "aaaaaaaaaa"})
    for command in (["info", path], ["verify", path],
                    ["migrate", path, str(tmp_path / "copy.sqlite")]):
        result = _spoolq(*command)
        assert result.returncode == 0, result.stderr
        rows = [line.split() for line in result.stdout.splitlines()]
        assert [row[0] for row in rows if row and row[0].startswith("a")] == [name], (
            result.stdout)
        assert all(row for row in rows), result.stdout


def _damage_dbm_record(path: str, key: str) -> None:
    """Flip a byte of the stored entry ``key`` of a dbm queue directory."""
    current = Path(path, "CURRENT").read_text().split()[-1]
    index = {}
    for line in Path(path, current + ".dir").read_text().splitlines():
        k, v = ast.literal_eval(line)
        index[k] = v
    offset, size = index[key]
    data = Path(path, current + ".dat")
    raw = bytearray(data.read_bytes())
    raw[offset + size - 3] ^= 0x01
    data.write_bytes(bytes(raw))


def test_dump_skip_bad_leaves_out_a_record_the_dbm_engine_finds_damaged(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.dbm")
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        q.put_many([{"n": n} for n in range(30)])
    assert "gen-" in "".join(os.listdir(path))
    _damage_dbm_record(path, "m1.10")
    out = str(tmp_path / "out.jsonl")
    result = _spoolq("dump", path, "-q", "jobs", "--skip-bad", "--chunk", "7", "-o", out)
    assert result.returncode == 1, result.stderr
    items = [json.loads(line) for line in Path(out).read_text().splitlines()]
    assert [i["n"] for i in items] == [n for n in range(30) if n != 10]
    assert "skipped" in result.stderr and "damaged" in result.stderr
    assert "1 record(s) of 'jobs' left out" in result.stderr
    # At the head, at the start of a page, and two in a row.
    for key in ("m1.0", "m1.7", "m1.8", "m1.29"):
        _damage_dbm_record(path, key)
    result = _spoolq("dump", path, "-q", "jobs", "--skip-bad", "--chunk", "7", "-o", out)
    assert result.returncode == 1, result.stderr
    items = [json.loads(line) for line in Path(out).read_text().splitlines()]
    assert [i["n"] for i in items] == [n for n in range(30) if n not in (0, 7, 8, 10, 29)]
    assert "5 record(s) of 'jobs' left out" in result.stderr
    # Without --skip-bad the damage stops the dump, as it did.
    result = _spoolq("dump", path, "-q", "jobs")
    assert result.returncode == 3
    assert "damaged" in result.stderr


def test_dump_to_a_folder_that_does_not_exist_names_the_output_not_a_temporary(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        q.put(1)
    out = str(tmp_path / "missing" / "out.jsonl")
    result = _spoolq("dump", path, "-q", "jobs", "-o", out)
    assert result.returncode == 3
    assert result.stderr.startswith(f"Error: {out}: "), result.stderr
    assert ".part" not in result.stderr
    assert not (tmp_path / "missing").exists()


def test_verify_reads_on_past_a_record_the_dbm_engine_finds_damaged(tmp_path: Path) -> None:
    path = str(tmp_path / "q.dbm")
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        q.put_many([{"n": n} for n in range(30)])
    for key in ("m1.3", "m1.20"):
        _damage_dbm_record(path, key)
    result = _spoolq("verify", path, "--json", "--chunk", "8")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["problem_count"] == 2, report["problems"]
    assert all("damaged" in p for p in report["problems"])
    jobs = report["queues"][0]
    assert (jobs["name"], jobs["read"], jobs["checked"]) == ("jobs", 30, 28)
