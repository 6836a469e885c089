"""The spoolq command, in process: info, peek, dump, verify and errors, on every disk engine."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, cast

import pytest

import spoolq
from spoolq.cli import ExitCode
from spoolq.engines import ENGINES, Engine, Lease, open_engine

from .cli_support import (
    GONE_OWNER,
    OTHER_HOST_OWNER,
    ROOT,
    biggest_file,
    fill,
    items,
    lease_as,
    run,
    run_json,
    run_process,
    snapshot,
    unchanged,
)
from .conftest import queue_path

COMMANDS = ["info", "peek", "dump", "load", "requeue", "purge", "compact", "verify", "migrate"]


@pytest.fixture
def filled(disk_path: str) -> str:
    fill(disk_path)
    return disk_path


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command: str) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0
    assert f"Usage: spoolq {command}" in result.stdout


def test_the_group_lists_every_subcommand_and_the_exit_codes() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.stdout
    assert "Exit status" in result.stdout


def test_info_table_and_json(filled: str, disk_engine: str) -> None:
    result = run("info", filled)
    assert result.exit_code == 0
    assert "jobs" in result.stdout and "other" in result.stdout
    assert "cbor+zstd" in result.stdout and "json+zstd" in result.stdout
    report = run_json("info", filled)
    assert report["engine"] == disk_engine
    assert report["format_version"] == {"lmdb": "3", "pickle": "2"}.get(disk_engine, "1")
    assert report["file_bytes"] > 0
    jobs, other = report["queues"]
    assert (jobs["name"], jobs["ready"], jobs["leased"], jobs["dead"]) == ("jobs", 23, 0, 2)
    assert (jobs["serializer"], jobs["compressor"]) == ("cbor", "zstd")
    assert jobs["oldest_age_seconds"] >= 0
    assert (other["name"], other["ready"], other["serializer"]) == ("other", 3, "json")
    assert other["compression_ratio_pct"] > 0  # the long string compresses
    assert other["raw_bytes"] > other["stored_bytes"]


def test_info_one_queue_and_lease_owners(filled: str) -> None:
    lease_as(filled, GONE_OWNER, 2)
    report = run_json("info", filled, "--queue", "jobs")
    [jobs] = report["queues"]
    assert (jobs["ready"], jobs["leased"]) == (21, 2)
    assert jobs["lease_owners"] == [{"owner": GONE_OWNER, "leased": 2, "process": "gone"}]
    assert "gone" in run("info", filled).stdout


def test_peek_table_json_offset_and_dead(filled: str) -> None:
    result = run("peek", filled, "-q", "jobs", "-n", "2")
    assert result.exit_code == 0
    assert '{"n":2}' in result.stdout and '{"n":3}' in result.stdout
    assert '{"n":4}' not in result.stdout
    data = run_json("peek", filled, "-q", "jobs", "-n", "3", "--offset", "1")
    assert data["ready"] == 23 and data["offset"] == 1
    assert [r["item"] for r in data["records"]] == [{"n": 3}, {"n": 4}, {"n": 5}]
    assert all(r["codec"] == "cbor+none" and r["attempts"] == 0 for r in data["records"])
    dead = run_json("peek", filled, "-q", "jobs", "--dead")
    assert [r["item"] for r in dead["records"]] == [{"n": 0}, {"n": 1}]
    assert all(r["reason"] and r["attempts"] == 1 for r in dead["records"])
    assert "nacked" in run("peek", filled, "-q", "jobs", "--dead").stdout
    assert "no items" in run("peek", filled, "-q", "jobs", "--offset", "50").stdout


def test_peek_shows_markup_like_text_verbatim(disk_path: str) -> None:
    with spoolq.SyncQueue.create(disk_path) as q:
        q.put("[bold]not markup[/bold] :smile:")
    assert "[bold]not markup[/bold] :smile:" in run("peek", disk_path).stdout


PICKLER = textwrap.dedent("""
    import sys, spoolq
    class Thing:            # lives in this process's __main__ only
        pass
    with spoolq.SyncQueue.create(sys.argv[1], name="p", serializer="pickle") as q:
        q.put({"plain": 1})
        q.put(Thing())
""")


def test_pickled_items_stay_raw_unless_allowed(disk_path: str, tmp_path: Path) -> None:
    script = tmp_path / "pickler.py"
    script.write_text(PICKLER)
    subprocess.run([sys.executable, str(script), disk_path], check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    data = run_json("peek", disk_path, "-q", "p")
    assert [("item" in r, "pickled" in r.get("note", "")) for r in data["records"]] == [
        (False, True), (False, True)]
    assert all(r["raw"] for r in data["records"])
    assert "--allow-pickle" in run("peek", disk_path, "-q", "p").stdout
    allowed = run_json("peek", disk_path, "-q", "p", "--allow-pickle")
    first, second = allowed["records"]
    assert first["item"] == {"plain": 1}
    assert "raw" in second and "cannot be decoded here" in second["note"]
    checked = run_json("verify", disk_path, "-q", "p")
    assert checked["ok"] and checked["queues"][0]["not_decodable_here"] == 2
    assert run("dump", disk_path, "-q", "p").exit_code == ExitCode.PROBLEM


class Reverse:
    """A custom compressor that the reading process does not know."""

    name = "reverse"

    @staticmethod
    def compress(data: bytes) -> bytes:
        return data[::-1][:-1]

    @staticmethod
    def decompress(data: bytes) -> bytes:
        return data[::-1]


def test_custom_codec_items_are_shown_raw_with_a_note(disk_path: str) -> None:
    with spoolq.SyncQueue.create(disk_path, compressor=Reverse(), compress_threshold=0) as q:
        q.put("x" * 50)
    [rec] = run_json("peek", disk_path)["records"]
    assert rec["codec"] == "cbor+reverse"
    assert "raw" in rec and "reverse" in rec["note"]
    assert run("peek", disk_path).exit_code == 0
    assert run("verify", disk_path).exit_code == 0


def test_dump_then_load_round_trips(filled: str, tmp_path: Path, disk_engine: str) -> None:
    out = tmp_path / "jobs.jsonl"
    result = run("dump", filled, "-q", "jobs", "-o", str(out))
    assert result.exit_code == 0 and "dumped 23" in result.stderr
    lines = out.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"n": n} for n in range(2, 25)]
    assert run("dump", filled, "-q", "jobs").stdout == out.read_text()
    other = str(tmp_path / f"copy{Path(filled).suffix}")
    result = run("load", other, str(out), "-q", "copy", "--batch-size", "5")
    assert result.exit_code == 0 and "loaded 23" in result.stdout
    assert items(other, "copy") == [{"n": n} for n in range(2, 25)]
    run("load", other, str(out), "-q", "copy")
    assert items(other, "copy") == [{"n": n} for n in range(2, 25)] * 2
    dead = run("dump", filled, "-q", "jobs", "--dead")
    assert dead.stdout.splitlines() == ['{"n":0}', '{"n":1}']
    assert run_json("info", other)["queues"][0]["serializer"] == "cbor"


def test_load_from_stdin_with_the_queue_codec(filled: str) -> None:
    result = run("load", filled, "-", "-q", "other", input='"d"\n\n{"e": [1.5, null]}\n')
    assert result.exit_code == 0, result.output
    assert items(filled, "other")[3:] == ["d", {"e": [1.5, None]}]
    records = run_json("peek", filled, "-q", "other", "--offset", "3")["records"]
    assert {r["codec"] for r in records} == {"json+none"}


def test_load_refuses_a_bad_line_before_writing(tmp_path: Path, disk_engine: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"ok": 1}\n{broken\n')
    target = queue_path(tmp_path, disk_engine)
    result = run("load", target, str(source))
    assert result.exit_code == ExitCode.PROBLEM
    assert f"{source}:2: not valid JSON" in result.stderr
    assert not os.path.exists(target)


def test_dump_refuses_items_json_cannot_hold(disk_path: str, tmp_path: Path) -> None:
    with spoolq.SyncQueue.create(disk_path) as q:
        q.put_many([{"ok": 1}, {1: "int key"}, b"bytes"])
    out = tmp_path / "out.jsonl"
    result = run("dump", disk_path, "-o", str(out))
    assert result.exit_code == ExitCode.PROBLEM
    assert "JSON keys are strings only" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not Path(str(out) + ".part").exists()


@pytest.mark.parametrize("item", ["\ud800x", {"ok": ["fine", "\udcff"]}, {"\ud800": 1}],
                         ids=["string", "nested", "key"])
def test_dump_refuses_strings_utf8_cannot_encode(tmp_path: Path, item: Any) -> None:
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path, name="j", serializer="pickle") as q:
        q.put_many([{"ok": 1}, item])
    out = tmp_path / "out.jsonl"
    for target in (["-o", str(out)], []):
        result = run("dump", path, "-q", "j", "--allow-pickle", *target)
        assert result.exit_code == ExitCode.PROBLEM, result.output
        assert result.stderr.startswith("Error: record 2 of 'j' cannot be written as JSON")
        assert "UTF-8 cannot encode" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not Path(str(out) + ".part").exists()
    # peek shows the item's repr instead of failing
    record = run_json("peek", path, "-q", "j", "--allow-pickle")["records"][1]
    assert "item" not in record and "UTF-8" in record["note"]


def test_verify_a_sound_file(filled: str) -> None:
    result = run("verify", filled)
    assert result.exit_code == 0
    assert "sound: 28 records read" in result.stdout
    report = run_json("verify", filled)
    assert report["ok"] and report["records"] == 28 and report["problems"] == []
    assert {q["name"]: q["checked"] for q in report["queues"]} == {
        "jobs": 23, "jobs.dead": 2, "other": 3, "other.dead": 0}


def test_verify_reports_a_damaged_record(filled: str) -> None:
    eng = open_engine(filled)
    try:
        [bad] = eng.append("jobs", [b"\x01\x02\x00\x00\x00\x00\x00garbage"], [7], 0.0)
    finally:
        eng.close()
    result = run("verify", filled)
    assert result.exit_code == ExitCode.PROBLEM
    assert f"record {bad} failed its checksum" in result.stdout
    assert result.stderr.strip() == f"Error: {filled}: 1 problem(s) found"
    report = json.loads(run("verify", filled, "--json").stdout)
    assert not report["ok"] and report["problem_count"] == 1
    peeked = run_json("peek", filled, "-q", "jobs", "--offset", "23")["records"]
    assert "damaged" not in peeked[0] and "checksum" in peeked[0]["note"]


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty"])
@pytest.mark.parametrize("command", ["verify", "info", "peek", "dump"])
def test_damaged_files_fail_cleanly(filled: str, damage: str, command: str) -> None:
    target = biggest_file(filled)
    data = Path(target).read_bytes()
    if damage == "truncated":
        Path(target).write_bytes(data[: len(data) // 2])
    elif damage == "random bytes":
        Path(target).write_bytes(random.Random(7).randbytes(len(data)))
    else:
        Path(target).write_bytes(b"")
    result = run(command, filled, "-q", "jobs") if command != "info" else run(command, filled)
    assert result.exit_code in (ExitCode.PROBLEM, ExitCode.FILE), result.output
    assert result.stdout == "" or command == "verify"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in lines[0]


@pytest.mark.parametrize("args", [
    ["info"], ["info", "--json"], ["peek", "-q", "jobs", "-n", "50"], ["peek", "--dead", "-q",
    "jobs", "--json"], ["dump", "-q", "jobs"], ["verify"], ["verify", "--json"]])
def test_read_only_commands_leave_the_file_unchanged(filled: str, args: list[str]) -> None:
    before = snapshot(filled)
    result = run(args[0], filled, *args[1:])
    assert result.exit_code == 0
    assert unchanged(filled, before)


def test_read_only_commands_do_not_change_a_file_in_use(tmp_path: Path) -> None:
    """A writer holds the SQLite file open, so its WAL holds the latest commits."""
    disk_path = str(tmp_path / "in-use.sqlite")
    fill(disk_path)
    with spoolq.SyncQueue.create(disk_path, name="jobs") as q:
        q.put({"n": "late"})
        before = snapshot(disk_path)
        assert disk_path + "-wal" in before
        for args in (["info"], ["peek"], ["dump"], ["verify"]):
            assert run(args[0], disk_path, "-q", "jobs").exit_code == 0
        assert unchanged(disk_path, before)
        assert items(disk_path)[-1] == {"n": "late"}


@pytest.mark.parametrize("command", ["info", "peek", "dump", "verify", "requeue --dead",
                                     "purge --yes", "compact"])
def test_a_missing_file_is_one_line_and_exit_3(tmp_path: Path, command: str) -> None:
    name, *rest = command.split()
    missing = str(tmp_path / "missing.sqlite")
    result = run(name, missing, *rest)
    assert result.exit_code == ExitCode.FILE
    assert result.stderr == f"Error: {missing}: no such file\n"
    assert not os.path.exists(missing)


def test_usage_errors_exit_2(filled: str) -> None:
    assert run("peek", filled, "-n", "0").exit_code == ExitCode.USAGE
    assert run("info", filled, "--engine", "nope").exit_code == ExitCode.USAGE
    assert run("info", ":memory:").exit_code == ExitCode.USAGE
    assert run("nosuchcommand").exit_code == ExitCode.USAGE


@pytest.mark.parametrize("args", [
    ["info", "{db}", "--engine", "memory"],
    ["peek", "{db}", "--engine", "memory"],
    ["verify", "{db}", "--engine", "memory"],
    ["dump", "{db}", "-q", "jobs", "--engine", "memory"],
    ["load", "{new}", "{lines}", "--engine", "memory"],
    ["requeue", "{db}", "--dead", "--engine", "memory"],
    ["purge", "{db}", "--yes", "--engine", "memory"],
    ["compact", "{db}", "--engine", "memory"],
    ["migrate", "{db}", "{new}", "--from-engine", "memory"],
    ["migrate", "{db}", "{new}", "--to-engine", "memory"],
], ids=lambda args: "-".join(a.strip("{}-") for a in args if a != "memory"))
def test_the_memory_engine_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    db, new, lines = tmp_path / "jobs.sqlite", tmp_path / "new.sqlite", tmp_path / "one.jsonl"
    fill(str(db))
    lines.write_text('{"n": 1}\n')
    before = snapshot(str(db))
    result = run_process(*(a.format(db=db, new=new, lines=lines) for a in args))
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert result.stdout == ""
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "memory engine" in error
    assert "Traceback" not in result.stderr
    assert not new.exists()
    assert unchanged(str(db), before)


def test_python_m_spoolq_runs_the_same_command(filled: str) -> None:
    result = run_process("info", filled, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["queues"][0]["ready"] == 23
    assert result.stderr == ""


def test_a_queue_name_that_holds_nothing_is_pointed_out(filled: str) -> None:
    result = run("peek", filled, "-q", "job")
    assert result.exit_code == 0
    assert result.stderr == ("note: no queue 'job' holds items in this file "
                             "(queues with items: jobs, other)\n")
    assert run("peek", filled, "-q", "jobs").stderr == ""


# ---- peek --leased --------------------------------------------------------------------------

def _lease_expired(path: str, owner: str, queue: str = "jobs") -> None:
    """Lease one item as ``owner`` with a lease that ran out a minute ago (not reaped yet)."""
    eng = open_engine(path)
    try:
        t = time.time()
        assert len(eng.take(queue, 1, t, Lease(owner, t - 60))) == 1
    finally:
        eng.close()


@pytest.fixture
def with_leases(filled: str) -> str:
    """``filled`` with {"n": 2}, {"n": 3} leased by a gone process, {"n": 4} by another
    host and {"n": 5} by another host whose lease ran out."""
    lease_as(filled, GONE_OWNER, 2)
    lease_as(filled, OTHER_HOST_OWNER, 1)
    _lease_expired(filled, OTHER_HOST_OWNER)
    return filled


def test_verify_reads_leased_records_too(with_leases: str) -> None:
    report = run_json("verify", with_leases)
    assert report["ok"] and report["records"] == 28
    jobs = next(q for q in report["queues"] if q["name"] == "jobs")
    assert (jobs["ready"], jobs["leased"], jobs["read"], jobs["leased_read"]) == (19, 4, 19, 4)
    assert jobs["checked"] == 23


def test_the_verify_docs_say_leased_records_are_checked() -> None:
    """docs/cli.md's verify examples add up as the command counts: ``checked`` and ``not
    decodable here`` cover ready and leased records, ``read`` the ready ones."""
    text = (ROOT / "docs" / "cli.md").read_text()
    section = text[text.index("### `verify`"):text.index("### `dump` and `load`")]
    assert "counted, not checked" not in section.replace("\n", " ").split("custom engine")[0]
    example = section[section.index("$ spoolq verify jobs.sqlite\n"):]
    example = example[:example.index("```")]
    rows = [line.split() for line in example.splitlines()[3:] if line.split()[0] != "sound:"]
    assert rows
    for _name, ready, leased, read, checked, undecodable, problems in rows:
        assert int(read) == int(ready)
        assert int(checked) + int(undecodable) == int(ready) + int(leased)
        assert problems == "0"
    sound = re.search(r"sound: (\d+) records read", example)
    assert sound and int(sound[1]) == sum(int(r[1]) + int(r[2]) for r in rows)
    report = json.loads(section[section.index("$ spoolq verify jobs.sqlite -q thumbnails --json")
                                :].split("\n", 1)[1].split("```")[0])
    assert report["records"] == sum(q["read"] + q["leased_read"] for q in report["queues"])
    for q in report["queues"]:
        assert q["checked"] + q["not_decodable_here"] == q["ready"] + q["leased"]
        assert q["leased_read"] == q["leased"]


def test_dump_says_how_many_leased_items_it_left_out(with_leases: str, tmp_path: Path) -> None:
    note = ("note: 4 leased item(s) of 'jobs' not dumped; ack or requeue them first "
            "(`spoolq requeue --leased` takes back stuck leases)")
    result = run_process("dump", with_leases, "-q", "jobs")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"n": n} for n in range(6, 25)]
    assert result.stderr.splitlines() == [note]
    out = tmp_path / "out.jsonl"
    result = run_process("dump", with_leases, "-q", "jobs", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"jobs: dumped 19 item(s) to {out}", note]
    assert len(out.read_text().splitlines()) == 19
    # without leases, no note
    assert run_process("dump", with_leases, "-q", "other").stderr == ""


def test_verify_reports_a_damaged_leased_record(filled: str) -> None:
    eng = open_engine(filled)
    try:
        [bad] = eng.append("broken", [b"\x01\x02\x00\x00\x00\x00\x00garbage"], [7], 0.0)
        assert len(eng.take("broken", 1, time.time(), Lease(GONE_OWNER, time.time() + 3600))) == 1
    finally:
        eng.close()
    result = run("verify", filled)
    assert result.exit_code == ExitCode.PROBLEM
    assert f"broken: leased record {bad} failed its checksum" in result.stdout


def test_peek_leased_json(with_leases: str) -> None:
    data = run_json("peek", with_leases, "-q", "jobs", "--leased")
    assert (data["queue"], data["leased"], data["offset"]) == ("jobs", 4, 0)
    records = data["records"]
    assert [r["item"] for r in records] == [{"n": 2}, {"n": 3}, {"n": 4}, {"n": 5}]
    assert [(r["owner"], r["process"]) for r in records] == [
        (GONE_OWNER, "gone"), (GONE_OWNER, "gone"), (OTHER_HOST_OWNER, "unknown"),
        (OTHER_HOST_OWNER, "unknown")]
    assert all(r["attempts"] == 1 and r["codec"] == "cbor+none" for r in records)
    assert records[0]["id"] < records[1]["id"] < records[2]["id"] < records[3]["id"]
    assert 3500 < records[0]["seconds_left"] <= 3600
    assert -70 < records[3]["seconds_left"] < -50
    assert records[3]["until"] == pytest.approx(time.time() - 60, abs=10)
    page = run_json("peek", with_leases, "-q", "jobs", "--leased", "--offset", "1", "-n", "2")
    assert page["offset"] == 1
    assert [r["item"] for r in page["records"]] == [{"n": 3}, {"n": 4}]


def test_peek_leased_table(with_leases: str) -> None:
    result = run("peek", with_leases, "-q", "jobs", "--leased")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "jobs: leased items 1-4 of 4" in out
    assert GONE_OWNER in out and OTHER_HOST_OWNER in out
    assert "gone" in out and "unknown" in out
    assert '{"n":2}' in out and '{"n":5}' in out and '{"n":6}' not in out
    assert re.search(r" -1m \d+s ", out)  # the lease that ran out a minute ago
    assert "59m" in out  # time left on the hour-long leases
    assert "owner" in out and "left" in out
    empty = run("peek", with_leases, "-q", "other", "--leased")
    assert empty.exit_code == 0
    assert "other: no leased items at offset 0 (0 leased)" in empty.stdout
    assert run_json("peek", with_leases, "-q", "other", "--leased")["records"] == []


@pytest.mark.parametrize("args", [[], ["--json"], ["--full", "--offset", "1", "-n", "2"]])
def test_peek_leased_leaves_the_file_unchanged(with_leases: str, args: list[str]) -> None:
    before = snapshot(with_leases)
    result = run("peek", with_leases, "-q", "jobs", "--leased", *args)
    assert result.exit_code == 0, result.output
    assert unchanged(with_leases, before)


def test_peek_leased_and_dead_together_is_a_usage_error(filled: str) -> None:
    result = run("peek", filled, "-q", "jobs", "--leased", "--dead")
    assert result.exit_code == ExitCode.USAGE
    assert "--dead and --leased cannot be used together" in result.stderr


class _WithoutLeasedPeek:
    """An engine without the optional ``peek_leased`` (a custom engine may lack it)."""

    name = "plain"

    def __init__(self, inner: Engine) -> None:
        self._inner = inner

    def __getattr__(self, attr: str) -> Any:
        if attr == "peek_leased":
            raise AttributeError(attr)
        return getattr(self._inner, attr)


def test_peek_leased_on_an_engine_that_cannot_list_leases(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "q.sqlite")
    fill(path)

    def plain(path: str, *, durability: str, read_only: bool = False,
              **options: Any) -> Engine:
        return cast(Engine, _WithoutLeasedPeek(open_engine(path, "sqlite",
                                                           read_only=read_only)))

    monkeypatch.setitem(ENGINES, "plain", plain)
    result = run("peek", path, "-q", "jobs", "--leased", "--engine", "plain")
    assert result.exit_code == ExitCode.PROBLEM
    assert result.stdout == ""
    assert result.stderr == (f"Error: {path}: the plain engine cannot list leased items "
                             "(`spoolq info` counts them by owner)\n")
    assert run("peek", path, "-q", "jobs", "--engine", "plain").exit_code == 0
