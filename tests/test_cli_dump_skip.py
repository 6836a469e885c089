"""``spoolq dump --skip-bad``: records that cannot be dumped are left out, named, and counted
in the exit status; without the option the first one stops the dump."""

from __future__ import annotations

import datetime
import json
import sqlite3
from pathlib import Path
from typing import Any

import spoolq
from spoolq.cli import ExitCode
from spoolq.engines import open_engine
from spoolq.zdict import DICTIONARY_QUEUE, SAMPLE_COUNT

from .cli_support import run, run_process, snapshot, unchanged
from .test_cli import Reverse

SEQUENCE = (1 << 40) - 1
"""The part of an SQLite row id that is the record's id (the rest is the queue number)."""


def flip_byte(path: str, queue: str, ids: list[int], offset: int = -1) -> None:
    """Flip bits of one byte of each record ``ids`` of ``queue`` in an SQLite queue file, as
    a bad sector would."""
    db = sqlite3.connect(path)
    try:
        with db:
            (qno,) = db.execute("SELECT qno FROM spoolq_queues WHERE name = ?",
                                (queue,)).fetchone()
            for record_id in ids:
                rowid = qno << 40 | record_id
                (data,) = db.execute("SELECT data FROM spoolq_records WHERE id = ?",
                                     (rowid,)).fetchone()
                damaged = bytearray(data)
                damaged[offset] ^= 0x20
                db.execute("UPDATE spoolq_records SET data = ? WHERE id = ?",
                           (bytes(damaged), rowid))
    finally:
        db.close()


def record_ids(path: str, queue: str) -> list[int]:
    eng = open_engine(path, read_only=True)
    try:
        return [rec.id for rec in eng.peek(queue, 1000)]
    finally:
        eng.close()


def lines_of(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines()]


def skipped_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("skipped record ")]


def damaged_queue(tmp_path: Path) -> tuple[str, list[int]]:
    """Queue ``jobs`` of ten items ``{"n": 0..9}``, the records of items 3, 4 and 8 damaged;
    their ids."""
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        q.put_many([{"n": n} for n in range(10)])
    ids = record_ids(path, "jobs")
    bad = [ids[3], ids[4], ids[8]]
    flip_byte(path, "jobs", bad)
    return path, bad


def test_without_the_option_a_damaged_record_still_stops_the_dump(tmp_path: Path) -> None:
    path, bad = damaged_queue(tmp_path)
    out = tmp_path / "out.jsonl"
    out.write_text("before\n")
    result = run("dump", path, "-q", "jobs", "-o", str(out))
    assert result.exit_code == ExitCode.PROBLEM
    assert result.stderr.startswith(f"Error: record {bad[0]} of 'jobs': ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert out.read_text() == "before\n"


def test_skip_bad_dumps_every_sound_record_of_a_damaged_file(tmp_path: Path) -> None:
    path, bad = damaged_queue(tmp_path)
    before = snapshot(path)
    # a real process: its exit status and its stderr as a script sees them
    done = run_process("dump", path, "-q", "jobs", "--skip-bad")
    assert done.returncode == ExitCode.PROBLEM
    assert lines_of(done.stdout) == [{"n": n} for n in (0, 1, 2, 5, 6, 7, 9)]
    skipped = skipped_lines(done.stderr)
    assert [line.split(":")[0] for line in skipped] == [
        f"skipped record {record_id} of 'jobs'" for record_id in bad]
    assert all("checksum" in line for line in skipped)
    assert done.stderr.splitlines()[-1] == (
        "Error: 3 record(s) of 'jobs' left out of the dump (named above); 7 item(s) dumped")
    assert len(done.stderr.splitlines()) == 4
    assert unchanged(path, before)


def test_skip_bad_with_o_replaces_the_file_once_the_dump_completes(tmp_path: Path) -> None:
    path, bad = damaged_queue(tmp_path)
    before = snapshot(path)
    out = tmp_path / "out.jsonl"
    out.write_text("before\n")
    # two records a page: the page of items 8 and 9 keeps one, and items 3 and 4 fill one
    result = run("dump", path, "-q", "jobs", "--skip-bad", "--chunk", "2", "-o", str(out))
    assert result.exit_code == ExitCode.PROBLEM, result.output
    assert out.read_text().splitlines() == [
        json.dumps({"n": n}, separators=(",", ":")) for n in (0, 1, 2, 5, 6, 7, 9)]
    assert [line.split(":")[0] for line in skipped_lines(result.stderr)] == [
        f"skipped record {record_id} of 'jobs'" for record_id in bad]
    assert "jobs: dumped 7 item(s) to " in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: 3 record(s) of 'jobs'")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    assert unchanged(path, before)


def test_skip_bad_leaves_out_items_json_cannot_hold(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    when = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
    with spoolq.SyncQueue.create(path, name="sessions", serializer="pickle") as q:
        q.put_many([{"user": "a"}, {"user": "b", "expires": when}, b"raw bytes", ["c"]])
    ids = record_ids(path, "sessions")
    before = snapshot(path)
    out = tmp_path / "out.jsonl"
    result = run("dump", path, "-q", "sessions", "--allow-pickle", "--skip-bad", "-o", str(out))
    assert result.exit_code == ExitCode.PROBLEM, result.output
    assert lines_of(out.read_text()) == [{"user": "a"}, ["c"]]
    assert skipped_lines(result.stderr) == [
        f"skipped record {ids[1]} of 'sessions': cannot be written as JSON: "
        "item['expires'] is a datetime, which JSON cannot hold",
        f"skipped record {ids[2]} of 'sessions': cannot be written as JSON: "
        "item is a bytes, which JSON cannot hold",
    ]
    # without --allow-pickle no record is unpickled: every one is left out, none written
    result = run("dump", path, "-q", "sessions", "--skip-bad")
    assert result.exit_code == ExitCode.PROBLEM
    assert result.stdout == ""
    skipped = skipped_lines(result.stderr)
    assert len(skipped) == 4 and all("--allow-pickle" in line for line in skipped)
    assert "Error: 4 record(s) of 'sessions' left out of the dump" in result.stderr
    assert unchanged(path, before)


def test_skip_bad_leaves_out_records_of_a_codec_unknown_here(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path, compressor=Reverse()) as q:
        # records below the compression threshold are stored uncompressed
        q.put_many(["short", "x" * 500, "also short"])
    ids = record_ids(path, "default")
    result = run("dump", path, "--skip-bad")
    assert result.exit_code == ExitCode.PROBLEM, result.output
    assert lines_of(result.stdout) == ["short", "also short"]
    [line] = skipped_lines(result.stderr)
    assert line.startswith(f"skipped record {ids[1]} of 'default': cannot be decoded here")
    assert "reverse" in line


def test_skip_bad_leaves_out_records_that_need_a_damaged_zstd_dictionary(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    items = [{"event": "view", "user": f"user-{n % 90}", "path": f"/products/{n % 50}", "n": n}
             for n in range(SAMPLE_COUNT + 200)]
    with spoolq.SyncQueue.create(path, compressor="zstd-dict") as q:
        for start in range(0, len(items), 100):
            q.put_many(items[start:start + 100])
        q.put_many([{"n": -1}])  # small: stored uncompressed, needs no dictionary
    [dictionary] = record_ids(path, DICTIONARY_QUEUE)
    flip_byte(path, DICTIONARY_QUEUE, [dictionary], offset=-100)
    before = snapshot(path)
    result = run("dump", path, "--skip-bad")
    assert result.exit_code == ExitCode.PROBLEM
    dumped = lines_of(result.stdout)
    skipped = skipped_lines(result.stderr)
    assert skipped and all("dictionary 1 of the file is damaged" in line for line in skipped)
    assert len(dumped) + len(skipped) == len(items) + 1
    assert dumped[-1] == {"n": -1}
    assert all(item in items for item in dumped[:-1])
    assert f"{len(skipped)} record(s) of 'default' left out" in result.stderr
    assert unchanged(path, before)


def test_skip_bad_on_a_sound_queue_changes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        q.put_many([{"n": n} for n in range(5)])
    plain = run("dump", path, "-q", "jobs")
    skipping = run("dump", path, "-q", "jobs", "--skip-bad")
    assert plain.exit_code == skipping.exit_code == 0
    assert skipping.stdout == plain.stdout and lines_of(plain.stdout) == [
        {"n": n} for n in range(5)]
    assert skipping.stderr == plain.stderr == ""
