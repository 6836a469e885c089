"""The spoolq command on JSON Lines that Python's parser takes but JSON does not hold, on
output files next to a queue, and on partial loads."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import spoolq
from spoolq.cli import ExitCode

from .cli_support import ROOT, fill, run, run_json, run_process


@pytest.mark.parametrize(("line", "why"), [
    ('"\\udcff"', "lone surrogate"),
    ('{"a": NaN}', "NaN is not a JSON value"),
    ('[Infinity]', "Infinity is not a JSON value"),
    ('{"a": 1e400}', "item['a'] is inf"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
], ids=["surrogate", "nan", "infinity", "overflow", "deep"])
def test_load_refuses_lines_json_does_not_hold_before_writing(tmp_path: Path, line: str,
                                                              why: str) -> None:
    """Such a line used to pass the read-through, so the batches before it were loaded
    (or it was loaded, and ``dump`` then refused it; deep nesting was a traceback)."""
    lines = tmp_path / "items.jsonl"
    lines.write_text('{"n": 1}\n{"n": 2}\n{"n": 3}\n' + line + "\n")
    path = str(tmp_path / "q.sqlite")
    fill(path)
    result = run("load", path, str(lines), "-q", "jobs", "--batch-size", "2")
    assert result.exit_code == ExitCode.PROBLEM, result.output
    assert result.stderr.startswith(f"Error: {lines}:4: ")
    assert why in result.stderr
    assert len(result.stderr.splitlines()) == 1
    [q] = run_json("info", path, "-q", "jobs")["queues"]
    assert q["ready"] == 23


def test_load_from_stdin_refuses_nan_and_keeps_the_batches_before(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    result = run("load", path, "-", "--batch-size", "1", input='{"n": 1}\n[NaN]\n')
    assert result.exit_code == ExitCode.PROBLEM, result.output
    assert result.stderr == ("Error: -:2: not valid JSON: NaN is not a JSON value "
                             "(1 item(s) before it were loaded)\n")
    assert run("dump", path).stdout == '{"n":1}\n'



def test_what_load_takes_dump_gives_back(tmp_path: Path) -> None:
    lines = tmp_path / "items.jsonl"
    items = [{"a": 1.5, "é": ["\u2603", None, True, -0.0, 10**30]}, "x", []]
    lines.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items),
                     encoding="utf-8")
    path = str(tmp_path / "q.lmdb")
    assert run("load", path, str(lines)).exit_code == 0
    result = run("dump", path)
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == items


@pytest.mark.parametrize("suffix", [".sqlite", ".lmdb", ".dbm", ".pickle"])
def test_load_with_the_raw_serializer_is_a_usage_error_and_creates_nothing(
        tmp_path: Path, suffix: str) -> None:
    """The raw serializer takes bytes only: the load failed, after creating the file and a
    queue that keeps the raw codec (so a program opening it with the default codec is
    refused)."""
    lines = tmp_path / "items.jsonl"
    lines.write_text('{"n": 1}\n"text"\n')
    new = tmp_path / f"new{suffix}"
    result = run("load", str(new), str(lines), "--serializer", "raw")
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Error: Invalid value for '--serializer': the raw serializer takes bytes" in (
        result.stderr)
    assert not new.exists()
    path = str(tmp_path / f"q{suffix}")
    fill(path)
    result = run("load", path, str(lines), "-q", "fresh", "--serializer", "raw")
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "fresh" not in {q["name"] for q in run_json("info", path)["queues"]}
    assert run("load", path, str(lines), "-q", "fresh").exit_code == 0


def _miscount(path: str, queue: str) -> None:
    """Make the stored ready count of ``queue`` one more than its records (as damage
    does), so a migrate stops at that queue after copying the queues before it."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE spoolq_queues SET ready = ready + 1 WHERE name = ?", (queue,))
    conn.close()


@pytest.mark.parametrize("suffix", [".sqlite", ".lmdb", ".dbm", ".pickle"])
def test_a_migrate_that_stops_half_way_leaves_no_new_destination(tmp_path: Path,
                                                                  suffix: str) -> None:
    """'jobs' was copied before 'other' stopped the copy: the new DST kept it, so the
    same migrate was then refused, and with --append copied 'jobs' twice."""
    src = str(tmp_path / "src.sqlite")
    fill(src)
    _miscount(src, "other")
    dst = tmp_path / f"dst{suffix}"
    result = run("migrate", src, str(dst))
    assert result.exit_code == ExitCode.PROBLEM, result.output
    assert "'other': 4 items were to be copied, 3 were read" in result.stderr
    assert [name for name in os.listdir(tmp_path) if name.startswith("dst")] == []


def test_a_migrate_that_stops_half_way_keeps_an_existing_destination(tmp_path: Path) -> None:
    src = str(tmp_path / "src.sqlite")
    fill(src)
    _miscount(src, "other")
    dst = str(tmp_path / "dst.lmdb")
    with spoolq.SyncQueue.create(dst, name="mine") as q:
        q.put("kept")
    result = run("migrate", src, dst)
    assert result.exit_code == ExitCode.PROBLEM, result.output
    assert run("dump", dst, "-q", "mine").stdout == '"kept"\n'


def test_load_reads_a_pipe_given_as_file(tmp_path: Path) -> None:
    """`spoolq load q.sqlite <(command)` names a pipe, which cannot be read through twice:
    it stopped with "File or stream is not seekable" and loaded nothing."""
    path = str(tmp_path / "q.sqlite")
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b'{"n": 1}\n{"n": 2}\n')
        os.close(write_end)
        result = run("load", path, f"/dev/fd/{read_end}", "--json")
    finally:
        os.close(read_end)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"queue": "default", "loaded": 2}
    assert run("dump", path).stdout == '{"n":1}\n{"n":2}\n'


def test_a_bad_line_in_a_pipe_keeps_the_batches_before(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    result = run_process("load", path, "/dev/stdin", "--batch-size", "1",
                         input='{"n": 1}\nnot json\n')
    assert result.returncode == ExitCode.PROBLEM, result.stderr
    assert result.stderr.startswith("Error: /dev/stdin:2: not valid JSON")
    assert result.stderr.rstrip().endswith("(1 item(s) before it were loaded)")
    assert run("dump", path).stdout == '{"n":1}\n'


def test_dump_writes_into_a_pipe_named_by_o(tmp_path: Path) -> None:
    """`-o >(command)`, `-o /dev/stdout`: the dump went to FILE.part, then replaced FILE,
    so a device or pipe was replaced by a plain file (or, in /dev/fd, failed)."""
    path = str(tmp_path / "q.sqlite")
    fill(path)
    read_end, write_end = os.pipe()
    try:
        result = run("dump", path, "-q", "other", "-o", f"/dev/fd/{write_end}")
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read()
    finally:
        for fd in (read_end, write_end):
            with contextlib.suppress(OSError):
                os.close(fd)
    assert result.exit_code == 0, result.output
    assert data.decode().splitlines() == ['"a"', '"b"', json.dumps("c" * 500)]


def test_dump_o_through_a_symlink_keeps_the_link(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    fill(path)
    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    result = run("dump", path, "-q", "other", "-o", str(link))
    assert result.exit_code == 0, result.output
    assert link.is_symlink()
    assert real.read_text().splitlines()[:2] == ['"a"', '"b"']
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".sqlite"
                  and "sqlite" not in p.name) == ["link.jsonl", "real.jsonl"]


def _ready(path: str) -> int:
    """Ready items of the queue ``default`` of ``path``; 0 while it is being created."""
    result = run("info", path, "-q", "default", "--json")
    return json.loads(result.stdout)["queues"][0]["ready"] if result.exit_code == 0 else 0


def test_an_interrupted_load_says_how_many_items_it_loaded(tmp_path: Path) -> None:
    """Ctrl-C while loading from a pipe printed "Aborted!" alone: the batches written
    stay, and without their count a new load adds them twice."""
    path = str(tmp_path / "q.sqlite")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    with subprocess.Popen([sys.executable, "-m", "spoolq", "load", path, "-",
                           "--batch-size", "1"], stdin=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env) as proc:
        assert proc.stdin is not None and proc.stderr is not None
        try:
            proc.stdin.write(b'{"n": 1}\n{"n": 2}\n')
            proc.stdin.flush()
            deadline = time.monotonic() + 10
            while _ready(path) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            err = proc.stderr.read().decode()
            assert proc.wait(10) == ExitCode.INTERRUPTED == 130  # as a shell reports SIGINT
        finally:
            proc.kill()
    assert "default: 2 item(s) of - were loaded before the load stopped" in err
    assert err.endswith("Error: interrupted (Ctrl-C)\n")
    assert "Traceback" not in err and "Aborted" not in err


@pytest.mark.parametrize("command", [["info"], ["verify"], ["migrate", "{dst}"]])
def test_a_mistyped_queue_name_is_pointed_out_by_every_command(tmp_path: Path,
                                                               command: list[str]) -> None:
    """peek, dump, requeue and purge said so; info, verify and migrate showed an empty
    queue (and migrate copied nothing) with status 0 and no word of it."""
    path = str(tmp_path / "q.sqlite")
    fill(path)
    args = [a.format(dst=tmp_path / "dst.lmdb") for a in command]
    result = run(args[0], path, *args[1:], "-q", "jbos")
    assert result.exit_code == 0, result.output
    assert result.stderr == ("note: no queue 'jbos' holds items in this file "
                             "(queues with items: jobs, other)\n")
    extra = ["--append"] if args[0] == "migrate" else []
    held = run(args[0], path, *args[1:], "-q", "jobs", *extra)
    assert held.exit_code == 0, held.output
    assert held.stderr == ""


def test_load_refuses_a_surrogate_written_as_utf8_bytes(tmp_path: Path) -> None:
    """Python's parser decodes the bytes ED B3 BF to the lone surrogate U+DCFF."""
    lines = tmp_path / "items.jsonl"
    lines.write_bytes(b'{"n": 1}\n"\xed\xb3\xbf"\n')
    path = str(tmp_path / "q.sqlite")
    result = run("load", path, str(lines), "--batch-size", "1")
    assert result.exit_code == ExitCode.PROBLEM, result.output
    assert result.stderr.startswith(f"Error: {lines}:2: not valid JSON: item is a string "
                                    "with a lone surrogate")
    assert not os.path.exists(path)


@pytest.mark.parametrize("number", ["1" + "0" * 250 + "e99", "1.8e308", "1e+0400"])
def test_load_refuses_every_number_too_large_for_a_float(tmp_path: Path, number: str) -> None:
    lines = tmp_path / "items.jsonl"
    lines.write_text(f'[0.5, 1e-400, 1e99, "\\u00e9\\ud83d\\ude00"]\n{{"a": [{number}]}}\n')
    result = run("load", str(tmp_path / "q.sqlite"), str(lines))
    assert result.exit_code == ExitCode.PROBLEM, result.output
    assert result.stderr.startswith(f"Error: {lines}:2: not valid JSON: item['a'][0] is inf")


def _on_a_terminal(*args: str) -> bytes:
    """What ``spoolq ARGS`` shows on a terminal that is its stdout and stderr."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    env.update(COLUMNS="100", LINES="40", TERM="xterm")
    main, side = pty.openpty()
    try:
        with subprocess.Popen([sys.executable, "-m", "spoolq", *args], stdin=subprocess.DEVNULL,
                              stdout=side, stderr=side, env=env) as proc:
            os.close(side)
            side = -1
            shown = b""
            while True:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: every end of the terminal's side is closed
                    break
                if not chunk:
                    break
                shown += chunk
            assert proc.wait(10) == 0, shown
    finally:
        os.close(main)
        if side >= 0:
            os.close(side)
    return shown


def test_dump_to_a_terminal_draws_no_progress_bar_among_the_items(tmp_path: Path) -> None:
    """The bar went to stderr, the same terminal: its first frame stayed in front of the
    first item ("dumping ━━━ 0/23 -:--:--{"n":2}"), and piped output fared the same."""
    path = str(tmp_path / "q.sqlite")
    fill(path)
    shown = _on_a_terminal("dump", path, "-q", "jobs")
    assert shown.replace(b"\r\n", b"\n").decode() == "".join(
        f'{{"n":{n}}}\n' for n in range(2, 25))
    shown = _on_a_terminal("dump", path, "-q", "jobs", "-o", str(tmp_path / "out.jsonl"))
    assert b"jobs: dumped 23 item(s) to " in shown
