"""The spoolq command on files it must not change or create, on bad option values, on items
JSON and text cannot show, on large queues and on queues another process is using."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

import spoolq
from spoolq.cli import ExitCode
from spoolq.engines import dead_queue_name, open_engine

from .cli_support import ROOT, fill, run, run_json, snapshot, unchanged


def _queue_names(path: str) -> list[str]:
    return [q["name"] for q in run_json("info", path)["queues"]]


@pytest.mark.parametrize("suffix", [".sqlite", ".lmdb"])
@pytest.mark.parametrize("args", [["requeue", "--leased"], ["requeue", "--dead"]])
def test_a_writing_command_refuses_an_empty_file(tmp_path: Path, suffix: str,
                                                 args: list[str]) -> None:
    """An engine opened for writing would make an empty file a new queue file."""
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    result = run(args[0], str(path), *args[1:])
    assert result.exit_code == ExitCode.FILE, result.output
    assert result.stderr.startswith("Error: ")
    assert path.read_bytes() == b""


def test_a_writing_command_refuses_an_empty_dbm_directory(tmp_path: Path) -> None:
    path = tmp_path / "empty.dbm"
    path.mkdir()
    result = run("requeue", str(path), "--dead")
    assert result.exit_code == ExitCode.FILE, result.output
    assert result.stderr == f"Error: {path} is an empty directory, not a spoolq dbm queue\n"
    assert os.listdir(path) == []


def test_requeue_repairs_a_dbm_index_a_killed_writer_left(tmp_path: Path) -> None:
    """The read-only commands refuse such a queue and say to open it for writing once."""
    path = str(tmp_path / "interrupted.dbm")
    fill(path)
    [index] = [name for name in os.listdir(path) if name.endswith(".dir")]
    os.remove(os.path.join(path, index))  # as if a rewrite of the index was cut short
    assert run("info", path).exit_code == ExitCode.FILE
    result = run("requeue", path, "-q", "jobs", "--leased")
    assert result.exit_code == 0, result.output
    [q] = run_json("info", path, "-q", "jobs")["queues"]
    assert (q["ready"], q["dead"]) == (23, 2)


def test_requeue_of_a_queue_holding_nothing_adds_no_queue(disk_path: str) -> None:
    fill(disk_path)
    before = _queue_names(disk_path)
    for args in (["--dead"], ["--leased"], ["--dead", "--leased", "--force"]):
        result = run("requeue", disk_path, "-q", "typo", *args)
        assert result.exit_code == 0, result.output
        assert "no queue 'typo' holds items" in result.stderr
    assert _queue_names(disk_path) == before


def test_the_note_on_an_empty_queue_names_only_queues_with_items(disk_path: str) -> None:
    fill(disk_path)
    with spoolq.SyncQueue.create(disk_path, name="drained") as q:
        q.put("x")
        assert q.get() == "x"
    with spoolq.SyncQueue.create(disk_path, name="never"):
        pass
    result = run("peek", disk_path, "-q", "typo")
    assert result.exit_code == 0
    assert result.stderr == ("note: no queue 'typo' holds items in this file "
                             "(queues with items: jobs, other)\n")


@pytest.mark.parametrize("name", ["", "\udcff", "x" * 300])
@pytest.mark.parametrize("command", [
    "info {db}", "peek {db}", "dump {db}", "verify {db}", "requeue {db} --dead",
    "purge {db} --yes", "load {new} {lines}", "migrate {db} {new}"])
def test_a_queue_name_no_queue_can_have_is_a_usage_error(tmp_path: Path, name: str,
                                                         command: str) -> None:
    """An empty name, one that is not UTF-8 (bytes of another encoding on the command
    line) or one longer than 255 bytes."""
    db, new, lines = tmp_path / "jobs.lmdb", tmp_path / "new.sqlite", tmp_path / "one.jsonl"
    fill(str(db))
    lines.write_text('{"n": 1}\n')
    before = snapshot(str(db))
    args = [a.format(db=db, new=new, lines=lines) for a in command.split()]
    result = run(*args, "-q", name)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Invalid value for '--queue'" in result.stderr
    assert not new.exists()
    assert unchanged(str(db), before)


@pytest.mark.parametrize("option", ["--serializer", "--compressor"])
def test_load_with_an_unknown_codec_is_a_usage_error_and_creates_nothing(
        tmp_path: Path, option: str) -> None:
    lines = tmp_path / "one.jsonl"
    lines.write_text('{"n": 1}\n')
    path = tmp_path / "new.sqlite"
    result = run("load", str(path), str(lines), option, "nope")
    assert result.exit_code == ExitCode.USAGE, result.output
    assert f"Invalid value for '{option}'" in result.stderr
    assert not path.exists()


@pytest.mark.parametrize("args", [
    ["peek", "--offset", str(10**20)], ["peek", "--leased", "--offset", str(10**20)],
    ["verify", "--chunk", str(10**20)], ["dump", "--chunk", str(10**20)],
    ["migrate", "--chunk", str(10**20)], ["requeue", "--dead", "--chunk", "0"]])
def test_offsets_and_chunks_out_of_range_are_usage_errors(disk_path: str, tmp_path: Path,
                                                          args: list[str]) -> None:
    fill(disk_path)
    extra = [str(tmp_path / "copy.sqlite")] if args[0] == "migrate" else []
    result = run(args[0], disk_path, *extra, "-q", "jobs", *args[1:])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "is not in the range" in result.stderr


def test_dump_refuses_to_write_over_the_queue_it_reads(disk_path: str) -> None:
    fill(disk_path)
    target = disk_path
    if os.path.isdir(disk_path):  # a dbm queue: a file inside its directory
        target = os.path.join(disk_path, sorted(os.listdir(disk_path))[0])
    before = snapshot(disk_path)
    result = run("dump", disk_path, "-q", "jobs", "-o", target)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "would overwrite the queue" in result.stderr
    assert unchanged(disk_path, before)
    assert not os.path.exists(target + ".part")


def test_items_with_an_integer_too_long_for_text_are_shown_not_a_crash(
        tmp_path: Path) -> None:
    path = str(tmp_path / "big-int.sqlite")
    with spoolq.SyncQueue.create(path) as q:
        q.put_many([1 << 20_000, {"n": [1 << 20_000]}, 7])
    records = run_json("peek", path)["records"]
    assert [r.get("item") for r in records] == [None, None, 7]
    assert "more than 4300 digits" in records[0]["note"]
    assert records[1]["note"].startswith("item['n'][0] is an integer")
    assert all(r["repr"].startswith("<") for r in records[:2])
    table = run("peek", path)
    assert table.exit_code == 0 and "cannot be shown" in table.stdout
    dumped = run("dump", path)
    assert dumped.exit_code == ExitCode.PROBLEM
    assert dumped.stderr.startswith("Error: record 1 of 'default' cannot be written as JSON")
    assert "more than 4300 digits" in dumped.stderr


def test_requeue_dead_does_not_hold_every_dead_letter_in_memory(tmp_path: Path) -> None:
    path = str(tmp_path / "many-dead.sqlite")
    with spoolq.SyncQueue.create(path, name="jobs", serializer="raw", compressor="none"):
        pass
    n, size = 6000, 4096
    eng = open_engine(path)
    try:
        data = [os.urandom(size) for _ in range(n)]
        eng.append(dead_queue_name("jobs"), data, [size] * n, 1.0)
    finally:
        eng.close()
    del data
    tracemalloc.start()
    try:
        result = run("requeue", path, "-q", "jobs", "--dead")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    assert result.stdout == f"jobs: moved {n} dead letter(s) back to the queue\n"
    assert peak < n * size / 3, f"peak {peak} bytes for {n * size} bytes of dead letters"
    [q] = run_json("info", path, "-q", "jobs")["queues"]
    assert (q["ready"], q["dead"]) == (n, 0)


def test_dump_while_a_consumer_takes_items_misses_none_that_stay(tmp_path: Path) -> None:
    """The consumer takes items from the head after dump has read past them; every item
    it leaves must still be dumped once."""
    path = str(tmp_path / "busy.sqlite")
    total, taken = 20_000, 500
    with spoolq.SyncQueue.create(path) as q:
        q.put_many([{"n": n, "pad": "x" * 100} for n in range(total)])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p))
    with subprocess.Popen([sys.executable, "-m", "spoolq", "dump", path, "--chunk", "100"],
                          stdout=subprocess.PIPE, env=env) as proc:
        assert proc.stdout is not None
        # dump has read 1000 items, and blocks once the pipe is full: far from the end.
        lines = [proc.stdout.readline() for _ in range(1000)]
        with spoolq.SyncQueue.create(path) as q:
            got = [item["n"] for item in q.get_many(taken)]
        lines += proc.stdout.read().splitlines()
    assert proc.returncode == 0
    assert got == list(range(taken))
    dumped = [json.loads(line)["n"] for line in lines]
    assert len(dumped) == len(set(dumped))
    assert set(range(taken, total)) <= set(dumped)
