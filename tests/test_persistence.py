"""Persistence across processes, crashes (SIGKILL) and damaged or foreign files."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import spoolq
from spoolq import SyncQueue

from .conftest import queue_path

PRODUCER = textwrap.dedent("""
    import asyncio, sys, spoolq
    path, durability, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "sync":
        q = spoolq.SyncQueue.create(path, durability=durability)
        i = 0
        while True:
            q.put({"n": i, "pad": "x" * (i % 300)})
            print(i, flush=True)
            i += 1
    async def main():
        q = await spoolq.Queue.create(path, durability=durability)
        i = 0
        while True:
            await q.put({"n": i, "pad": "x" * (i % 300)})
            print(i, flush=True)
            i += 1
    asyncio.run(main())
""")


def _run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=60, check=True)


def test_items_survive_close_and_reopen_in_another_process(disk_path: str) -> None:
    _run_child(textwrap.dedent("""
        import sys, spoolq
        with spoolq.SyncQueue.create(sys.argv[1], name="jobs") as q:
            q.put_many([{"job": i} for i in range(100)])
    """), disk_path)
    out = _run_child(textwrap.dedent("""
        import sys, json, spoolq
        with spoolq.SyncQueue.create(sys.argv[1], name="jobs") as q:
            print(json.dumps(q.get_many(None)))
    """), disk_path)
    assert out.stdout.strip() == str([{"job": i} for i in range(100)]).replace("'", '"')


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("durability", ["commit", "fsync"])
def test_sigkill_while_putting_loses_no_returned_put(tmp_path: Path, disk_engine: str,
                                                     durability: str, mode: str) -> None:
    path = queue_path(tmp_path, disk_engine)
    expected_next = 0
    for round_no, stop_after in enumerate((37, 211, 5)):
        with subprocess.Popen([sys.executable, "-c", PRODUCER, path, durability, mode],
                              stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None
            last = -1
            for line in child.stdout:
                last = int(line)
                if last >= stop_after:
                    break
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        assert last >= stop_after, f"round {round_no}: the child died early"
        with SyncQueue.create(path) as q:
            items = q.get_many(None, block=False) if q.qsize() else []
        numbers = [item["n"] for item in items]
        # every put that returned (printed) is there, in order, with no gap; the child may
        # have got further than the lines read here before the signal landed
        assert len(numbers) >= last + 1, f"round {round_no}: returned puts were lost"
        assert numbers == list(range(len(numbers))), f"round {round_no}: order or gap"
        expected_next += len(numbers)
    assert expected_next > 0


def test_random_bytes_file_is_reported_not_emptied(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite"
    junk = os.urandom(4096)
    path.write_bytes(junk)
    with pytest.raises(spoolq.FormatError, match="not a spoolq queue"):
        SyncQueue.create(path)
    assert path.read_bytes() == junk


def test_a_directory_is_not_an_sqlite_queue(tmp_path: Path) -> None:
    folder = tmp_path / "jobs.sqlite"
    folder.mkdir()
    with pytest.raises(spoolq.FormatError, match="is a directory"):
        SyncQueue.create(folder)
    assert list(folder.iterdir()) == []


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()
    with pytest.raises(spoolq.FormatError, match="not a spoolq queue"):
        SyncQueue.create(path)


@pytest.mark.parametrize("marks", [
    ["CREATE VIEW app_settings AS SELECT 1 AS x"],
    ["PRAGMA application_id = 1234"],
    ["PRAGMA user_version = 3"],
], ids=["a view only", "an application id", "a user version"])
def test_an_sqlite_database_of_another_program_without_tables_is_left_alone(
        tmp_path: Path, marks: list[str]) -> None:
    path = tmp_path / "app.sqlite"
    conn = sqlite3.connect(path)
    for statement in marks:
        conn.execute(statement)
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(spoolq.FormatError, match="not a spoolq queue"):
        SyncQueue.create(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite"]


def _page_size(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        size: int = conn.execute("PRAGMA page_size").fetchone()[0]
        return size
    finally:
        conn.close()


def test_sqlite_file_with_another_page_size_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(path) as q:
        q.put_many(["a", "b"])
    assert _page_size(path) == 1024  # new files: small pages, short commits
    conn = sqlite3.connect(path, isolation_level=None)  # as a file made with SQLite's default
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("VACUUM")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    assert _page_size(path) == 4096
    with SyncQueue.create(path) as q:
        q.put("c")
        assert q.get_many(None) == ["a", "b", "c"]
    assert _page_size(path) == 4096


def test_sqlite_page_size_option_applies_to_new_files_only(tmp_path: Path) -> None:
    path = tmp_path / "big.sqlite"
    with SyncQueue.create(path, engine_options={"page_size": 8192}) as q:
        q.put(b"x" * 100_000)
    assert _page_size(path) == 8192
    with SyncQueue.create(path, engine_options={"page_size": 1024}) as q:
        assert q.get() == b"x" * 100_000
    assert _page_size(path) == 8192
    for bad in (1000, 256, 131072, "4096"):
        with pytest.raises(spoolq.ConfigurationError, match="page_size"):
            SyncQueue.create(tmp_path / "bad.sqlite", engine_options={"page_size": bad})
    assert not (tmp_path / "bad.sqlite").exists()


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(path) as q:
        q.put(1)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE spoolq_meta SET value = ? WHERE key = 'format_version'", (b"99",))
    conn.close()
    with pytest.raises(spoolq.FormatError, match="format version 99"):
        SyncQueue.create(path)


def test_damaged_record_is_reported_and_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(path) as q:
        q.put_many(["good", "will be damaged", "after"])
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE spoolq_records SET data = CAST(substr(data, 1, 8) || x'00ff' AS BLOB) "
                     "WHERE id = (SELECT min(id) + 1 FROM spoolq_records)")
    conn.close()
    with SyncQueue.create(path) as q:
        assert q.get() == "good"
        with pytest.raises(spoolq.CorruptError, match="record 2"):
            q.peek(offset=0)
        # a get never hands out a wrong item nor loses the damaged one: it becomes a dead letter
        assert q.get() == "after"
        assert q.stats["dead"] == 1
        with pytest.raises(spoolq.CorruptError, match="checksum"):
            q.peek(dead=True)


def test_codec_settings_are_stored_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    # (A stored "pickle" is used only when asked for: see test_pickle_consent.py.)
    with SyncQueue.create(path, serializer="json", compressor="lzma") as q:
        q.put(["a", "list"])
    with SyncQueue.create(path) as q:
        assert q.stats["serializer"] == "json" and q.stats["compressor"] == "lzma"
        assert q.get() == ["a", "list"]
    with pytest.raises(spoolq.ConfigurationError, match="created with serializer 'json'"):
        SyncQueue.create(path, serializer="cbor")
    with SyncQueue.create(path, compressor="zlib") as q:
        q.put(["z"] * 100)
    with SyncQueue.create(path) as q:
        assert q.stats["compressor"] == "zlib"
        assert q.get() == ["z"] * 100


def test_named_queues_share_a_file(disk_path: str) -> None:
    with SyncQueue.create(disk_path, name="a") as a, SyncQueue.create(disk_path, name="b") as b:
        a.put("for a")
        b.put("for b")
        assert b.get() == "for b"
        assert a.qsize() == 1
