"""What ``info`` (and the other commands that list a file's queues) report about stores
out of the common run: an SQLite file whose queue name is stored as bytes, as spoolq
wrote one before it checked the type of a name, and queues that have no file of their
own (PostgreSQL, a server's)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

import spoolq

from .cli_support import fill, run, run_json, snapshot, unchanged
from .servers import ThreadedServer

BYTES_NAME = b"raw\xffjobs"
SHOWN = r"b'raw\xffjobs'"


def _bytes_named_file(tmp_path: Path) -> str:
    """A queue file of :func:`fill` plus a queue named by ``BYTES_NAME`` (a BLOB) holding
    two ready records and a dead letter (of a queue named by text, as the dead letters of
    such a queue were)."""
    path = str(tmp_path / "q.sqlite")
    fill(path)
    with spoolq.SyncQueue.create(path, name="scratch", max_attempts=1) as q:
        q.put_many(["a", "b", "c"])
        q.nack(q.lease())
    with sqlite3.connect(path) as con:
        con.execute("UPDATE spoolq_queues SET name = ? WHERE name = 'scratch'", (BYTES_NAME,))
    con.close()
    return path


def test_info_shows_a_queue_name_stored_as_bytes_readably(tmp_path: Path) -> None:
    # info failed with "TypeError: endswith first arg must be bytes or a tuple of bytes".
    path = _bytes_named_file(tmp_path)
    before = snapshot(path)
    result = run("info", path)
    assert result.exit_code == 0, result.output
    assert SHOWN in result.stdout and "jobs" in result.stdout
    assert f"queue name {SHOWN} is stored as bytes" in result.stderr
    report = run_json("info", path)
    odd = [q for q in report["queues"] if q.get("name_hex")]
    assert [(q["name"], q["name_hex"], q["ready"]) for q in odd] == [
        (SHOWN, BYTES_NAME.hex(), 2)]
    assert {q["name"] for q in report["queues"]} == {"jobs", "other", "scratch", SHOWN}
    assert unchanged(path, before)


def test_the_other_commands_that_list_queues_name_it_too(tmp_path: Path) -> None:
    path = _bytes_named_file(tmp_path)
    before = snapshot(path)
    checked = run("verify", path)
    assert checked.exit_code == 1, checked.output
    assert f"queue name {SHOWN} is stored as bytes" in checked.stdout
    assert "2 ready" in checked.stdout
    missing = run("peek", path, "-q", "nosuch")
    assert missing.exit_code == 0, missing.output
    assert "queues with items: jobs, other, scratch" in missing.stderr
    assert run("dump", path, "-q", "nosuch").exit_code == 0
    copy = str(tmp_path / "copy.sqlite")
    migrated = run("migrate", path, copy)
    assert migrated.exit_code == 0, migrated.output
    assert f"queue name {SHOWN} is stored as bytes" in migrated.stderr
    assert run_json("info", copy)["queues"][0]["name"] == "jobs"
    assert unchanged(path, before)
    # A server does not list the name among its queues: the name of no queue it serves.
    with ThreadedServer(path) as srv:
        served = run("info", srv.url)
    assert served.exit_code == 0, served.output
    assert "xffjobs" not in served.output


# ---- stores without a file -------------------------------------------------------------------

def test_info_on_a_served_queue_has_no_size_on_disk(tmp_path: Path) -> None:
    # It said "0 B on disk": the size of a file named spoolq://..., which does not exist.
    path = str(tmp_path / "served.sqlite")
    fill(path)
    with ThreadedServer(path) as srv:
        result = run("info", srv.url)
        assert result.exit_code == 0, result.output
        report = run_json("info", srv.url)
    first = result.stdout.splitlines()[0]
    assert "on disk" not in first and "0 B" not in first
    assert "no file of its own" in first
    assert report["file_bytes"] is None
    assert {q["name"] for q in report["queues"]} == {"jobs", "other"}
    assert run_json("info", path)["file_bytes"] == os.path.getsize(path) + (
        os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0)


def test_info_on_a_postgres_schema_has_no_size_on_disk(pg_url: str, pg_schema: str) -> None:
    with spoolq.SyncQueue.create(pg_url, name="jobs",
                                 engine_options={"schema": pg_schema}) as q:
        q.put_many([1, 2])
    result = run("info", pg_url, "--schema", pg_schema)
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert "on disk" not in first and "no file of its own" in first
    report = run_json("info", pg_url, "--schema", pg_schema)
    assert report["file_bytes"] is None
    compacted = run_json("compact", pg_url, "--schema", pg_schema)
    assert (compacted["bytes_before"], compacted["bytes_after"]) == (None, None)


@pytest.mark.parametrize("engine", ["sqlite", "lmdb", "dbm", "pickle"])
def test_info_on_a_file_gives_its_size(tmp_path: Path, engine: str) -> None:
    path = str(tmp_path / f"q.{engine}")
    fill(path)
    report = run_json("info", path)
    assert report["file_bytes"] > 0
    assert "B on disk" in run("info", path).stdout.splitlines()[0]
