"""The spoolq command's writing subcommands: requeue, purge, compact, migrate, and the
command run as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq.cli import ExitCode, maintain
from spoolq.engines import open_engine
from spoolq.zdict import DICTIONARY_QUEUE, checksum_key

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
)
from .conftest import DISK_ENGINES, queue_path


@pytest.fixture
def filled(disk_path: str) -> str:
    fill(disk_path)
    return disk_path


def _counts(path: str, queue: str = "jobs") -> tuple[int, int, int]:
    [q] = run_json("info", path, "-q", queue)["queues"]
    return q["ready"], q["leased"], q["dead"]


def test_requeue_dead_letters(filled: str) -> None:
    result = run("requeue", filled, "-q", "jobs", "--dead")
    assert result.exit_code == 0 and "moved 2 dead letter(s)" in result.stdout
    assert _counts(filled) == (25, 0, 0)
    assert items(filled)[-2:] == [{"n": 0}, {"n": 1}]
    assert run_json("requeue", filled, "-q", "jobs", "--dead")["dead_moved"] == 0


def test_requeue_leased_takes_back_what_is_stuck_and_refuses_live_leases(filled: str) -> None:
    lease_as(filled, GONE_OWNER, 2)         # {"n": 2}, {"n": 3}: their process has ended
    lease_as(filled, OTHER_HOST_OWNER, 1)   # {"n": 4}: held on another host
    assert _counts(filled) == (20, 3, 2)
    result = run("requeue", filled, "-q", "jobs", "--leased")
    assert result.exit_code == ExitCode.PROBLEM
    assert "released 2 lease(s)" in result.stdout and OTHER_HOST_OWNER in result.stdout
    assert "--force" in result.stderr and len(result.stderr.splitlines()) == 1
    assert _counts(filled) == (22, 1, 2)
    assert items(filled)[:2] == [{"n": 2}, {"n": 3}]   # back at their place in line
    forced = run("requeue", filled, "-q", "jobs", "--leased", "--force", "--json")
    assert forced.exit_code == 0
    assert json.loads(forced.stdout)["leases_released"] == 1
    assert _counts(filled) == (23, 0, 2)
    assert items(filled)[:3] == [{"n": 2}, {"n": 3}, {"n": 4}]


def test_requeue_needs_to_be_told_what(filled: str) -> None:
    assert run("requeue", filled).exit_code == ExitCode.USAGE
    assert run("requeue", filled, "--dead", "--force").exit_code == ExitCode.USAGE


def test_purge_refuses_without_a_terminal_or_yes(filled: str) -> None:
    result = run("purge", filled, "-q", "jobs")
    assert result.exit_code == ExitCode.PROBLEM
    assert "pass --yes" in result.stderr
    assert _counts(filled) == (23, 0, 2)


def test_purge_asks_for_confirmation(filled: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maintain, "is_interactive", lambda: True)
    declined = run("purge", filled, "-q", "jobs", input="n\n")
    assert declined.exit_code == ExitCode.PROBLEM
    assert "Delete 23 ready and 0 leased item(s) of 'jobs'" in declined.stderr
    assert _counts(filled) == (23, 0, 2)
    accepted = run("purge", filled, "-q", "jobs", input="y\n")
    assert accepted.exit_code == 0 and "deleted 23" in accepted.stdout
    assert _counts(filled) == (0, 0, 2)


def test_purge_with_yes_and_dead(filled: str) -> None:
    assert run_json("purge", filled, "-q", "jobs", "--dead", "--yes")["removed"] == 2
    assert _counts(filled) == (23, 0, 0)
    assert run("purge", filled, "-q", "jobs", "--dead").stdout.endswith("nothing to delete\n")
    assert run("purge", filled, "-q", "jobs", "-y").exit_code == 0
    assert _counts(filled) == (0, 0, 0)
    assert _counts(filled, "other") == (3, 0, 0)


def test_compact_keeps_every_item(disk_path: str, disk_engine: str) -> None:
    with spoolq.SyncQueue.create(disk_path) as q:
        q.put_many([os.urandom(64).hex() for _ in range(2000)])
        q.get_many(1990)
        kept = q.peek(10)
    report = run_json("compact", disk_path)
    assert report["engine"] == disk_engine
    if disk_engine == "sqlite":
        assert report["action"] == "VACUUM"
        assert report["bytes_after"] < report["bytes_before"]
    assert items(disk_path, "default") == kept
    assert run("verify", disk_path).exit_code == 0
    again = run("compact", disk_path).stdout
    assert "->" in again or "nothing to do" in again


@pytest.mark.parametrize("dst_engine", DISK_ENGINES)
def test_migrate_keeps_order_counts_dead_letters_and_codecs(filled: str, tmp_path: Path,
                                                           dst_engine: str) -> None:
    dst = queue_path(tmp_path / "dst", dst_engine)
    os.makedirs(tmp_path / "dst")
    before = run_json("peek", filled, "-q", "jobs", "-n", "100")["records"]
    result = run("migrate", filled, dst)
    assert result.exit_code == 0, result.output
    assert "jobs.dead" in result.stdout
    src_info, dst_info = run_json("info", filled), run_json("info", dst)
    strip = ("oldest_age_seconds",)
    assert [{k: v for k, v in q.items() if k not in strip} for q in dst_info["queues"]] == [
        {k: v for k, v in q.items() if k not in strip} for q in src_info["queues"]]
    after = run_json("peek", dst, "-q", "jobs", "-n", "100")["records"]
    assert [(r["item"], r["enqueued_at"]) for r in after] == [
        (r["item"], r["enqueued_at"]) for r in before]
    assert items(dst, "jobs", "--dead") == [{"n": 0}, {"n": 1}]
    assert items(dst, "other") == ["a", "b", "c" * 500]
    with spoolq.SyncQueue.create(dst, name="other") as q:   # reopens with the stored codec
        assert q.get() == "a"

    again = run("migrate", filled, dst)
    assert again.exit_code == ExitCode.PROBLEM
    assert "already holds 'jobs' (23 item(s))" in again.stderr
    appended = run_json("migrate", filled, dst, "--append", "-q", "jobs")
    assert {q["name"]: q["ready"] for q in appended["queues"]} == {"jobs": 46, "jobs.dead": 4}


def test_migrate_refuses_leased_items_and_the_same_file(filled: str, tmp_path: Path) -> None:
    lease_as(filled, GONE_OWNER, 1)
    dst = str(tmp_path / "dst.sqlite")
    result = run("migrate", filled, dst)
    assert result.exit_code == ExitCode.PROBLEM
    assert "requeue --leased" in result.stderr
    assert not os.path.exists(dst)
    assert run("migrate", filled, filled).exit_code == ExitCode.USAGE
    assert run("migrate", filled, ":memory:").exit_code == ExitCode.USAGE


def test_migrate_refuses_a_different_serializer(filled: str, tmp_path: Path) -> None:
    dst = str(tmp_path / "dst.sqlite")
    with spoolq.SyncQueue.create(dst, name="other", serializer="pickle"):
        pass
    result = run("migrate", filled, dst, "-q", "other")
    assert result.exit_code == ExitCode.PROBLEM
    assert "uses the json serializer" in result.stderr


def _zstd_dict_queue(path: str, name: str, word: str) -> list[Any]:
    """Queue ``name`` with ``compressor="zstd-dict"``, filled until it trained a dictionary."""
    first = [{"user": n, "text": f"{word} number {n} " * 5} for n in range(1200)]
    later = [{"user": n, "text": f"{word} again {n} " * 5} for n in range(20)]
    with spoolq.SyncQueue.create(path, name=name, compressor="zstd-dict") as q:
        q.put_many(first)
        q.put_many(later)   # compressed with the dictionary trained from the first
    eng = open_engine(path)
    try:
        assert len(eng.peek(DICTIONARY_QUEUE, 255)) == 1
    finally:
        eng.close()
    return first + later


def test_migrate_into_a_file_with_other_zstd_dictionaries(tmp_path: Path) -> None:
    src, dst = str(tmp_path / "src.sqlite"), str(tmp_path / "dst.sqlite")
    with spoolq.SyncQueue.create(src, name="plain") as q:
        q.put_many([{"n": n, "text": "spool " * 40} for n in range(50)])
    dst_items = _zstd_dict_queue(dst, "z", "hello")
    # no copied record needs a dictionary: nothing can be misread
    result = run("migrate", src, dst, "-q", "plain")
    assert result.exit_code == 0, result.output
    assert items(dst, "plain") == [{"n": n, "text": "spool " * 40} for n in range(50)]
    assert items(dst, "z") == dst_items

    # the source's own queue with a dictionary of the same number: refused, nothing written
    src_items = _zstd_dict_queue(src, "zs", "goodbye")
    refused = run("migrate", src, dst, "-q", "zs")
    assert refused.exit_code == ExitCode.PROBLEM
    assert refused.stderr.startswith("Error: record ")
    assert "needs zstd dictionary 1, and the destination's dictionary 1 is another one" \
        in refused.stderr
    assert [q["name"] for q in run_json("info", dst)["queues"]] == ["plain", "z"]
    eng = open_engine(dst)
    try:
        assert eng.get_meta("queue/zs/zstd-dict") is None
        assert len(eng.peek(DICTIONARY_QUEUE, 255)) == 1
    finally:
        eng.close()
    # a new file takes it, dictionary included
    fresh = str(tmp_path / "fresh.sqlite")
    assert run("migrate", src, fresh).exit_code == 0
    assert items(fresh, "zs") == src_items and items(fresh, "plain") == items(src, "plain")
    # the dictionary's checksum comes along, so a damaged copy would be noticed there too
    source, copy = open_engine(src), open_engine(fresh)
    try:
        assert copy.get_meta(checksum_key(1)) == source.get_meta(checksum_key(1)) is not None
    finally:
        source.close()
        copy.close()


# ---- as a real process ----------------------------------------------------------------------

def test_python_m_spoolq_help_and_version() -> None:
    result = run_process("--help")
    assert result.returncode == 0 and "Usage: spoolq" in result.stdout
    version = run_process("--version")
    assert version.returncode == 0 and spoolq.__version__ in version.stdout


@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_process_gets_one_line_for_a_damaged_file(filled: str, damage: str) -> None:
    target = biggest_file(filled)
    data = Path(target).read_bytes()
    Path(target).write_bytes(data[: len(data) // 2] if damage == "truncated"
                             else os.urandom(len(data)))
    result = run_process("verify", filled)
    assert result.returncode in (ExitCode.PROBLEM, ExitCode.FILE)
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr


def test_process_purge_without_a_terminal_refuses(filled: str) -> None:
    result = run_process("purge", filled, "-q", "jobs", stdin=subprocess.DEVNULL)
    assert result.returncode == ExitCode.PROBLEM and "pass --yes" in result.stderr
    assert _counts(filled) == (23, 0, 2)


def test_process_dump_piped_into_load_without_progress_output(filled: str,
                                                             tmp_path: Path) -> None:
    dumped = run_process("dump", filled, "-q", "jobs")
    assert dumped.returncode == 0 and dumped.stderr == ""    # no progress bar when piped
    target = str(tmp_path / "copy.sqlite")
    loaded = run_process("load", target, "-", "-q", "jobs", input=dumped.stdout)
    assert loaded.returncode == 0, loaded.stderr
    assert "\x1b" not in loaded.stdout + loaded.stderr
    assert items(target) == [{"n": n} for n in range(2, 25)]
    migrated = run_process("migrate", target, str(tmp_path / "again.sqlite"), "--json")
    assert json.loads(migrated.stdout)["queues"][0]["copied"] == 23


def test_serve_takes_the_server_options() -> None:
    result = subprocess.run([sys.executable, "-m", "spoolq", "serve", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert "--token-file" in result.stdout and "--max-frame" in result.stdout


def _junk_lmdb(tmp_path: Path) -> str:
    junk = tmp_path / "x.lmdb"
    junk.write_bytes(os.urandom(4096))
    return str(junk)


@pytest.mark.parametrize("case", ["junk", "no folder", "port in use"])
def test_serve_an_unusable_file_is_one_error_line_and_exit_3(tmp_path: Path, case: str) -> None:
    args = {"junk": [_junk_lmdb(tmp_path), "--port", "0"],
            "no folder": [str(tmp_path / "missing" / "x.sqlite"), "--port", "0"]}.get(case)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if args is None:
            args = [":memory:", "--port", str(taken.getsockname()[1])]
        result = run_process("serve", *args)
    assert result.returncode == ExitCode.FILE, result.stderr
    assert "listening" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line or "Error" in line]
    assert len(errors) == 1 and errors[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [[":memory:", "--bogus"], [], [":memory:", "--port", "70000"],
                                  [":memory:", "--port", "zero"],
                                  [":memory:", "--engine", "nope"]])
def test_serve_bad_arguments_are_a_usage_error_of_spoolq_serve(args: list[str]) -> None:
    result = run_process("serve", *args)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "listening" not in result.stdout
    assert "Usage: spoolq serve PATH [OPTIONS]" in result.stderr
    assert "python -m spoolq.server" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("Error: ")]) == 1
    assert "Traceback" not in result.stderr


def test_serve_runs_until_sigterm_and_python_m_spoolq_server_keeps_its_ways(
        tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with subprocess.Popen([sys.executable, "-m", "spoolq", "serve", ":memory:", "--port", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("listening on spoolq://127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    # the module's own command line: status 1 with a log line, argparse usage under its name
    server = [sys.executable, "-m", "spoolq.server"]
    junk = subprocess.run([*server, _junk_lmdb(tmp_path), "--port", "0"], capture_output=True,
                          text=True, timeout=60, env=env, check=False)
    assert junk.returncode == 1 and "ERROR spoolq: " in junk.stderr
    bad = subprocess.run([*server, ":memory:", "--bogus"], capture_output=True, text=True,
                         timeout=60, env=env, check=False)
    assert bad.returncode == 2 and "python -m spoolq.server: error:" in bad.stderr


def test_verbose_serve_logs_each_line_once(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with subprocess.Popen([sys.executable, "-m", "spoolq", "-v", "serve", ":memory:", "--port",
                           "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("listening on spoolq://127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0
    lines = err.splitlines()
    assert sum("serving :memory:" in line for line in lines) == 1, err
    assert sum("SIGTERM received" in line for line in lines) == 1, err
    assert "spoolq: spoolq:" not in err


def test_verify_names_a_zstd_dictionary_that_fails_its_checksum(tmp_path: Path) -> None:
    path = str(tmp_path / "z.sqlite")
    _zstd_dict_queue(path, "z", "hello")
    assert run("verify", path).exit_code == 0
    eng = open_engine(path)
    try:
        eng.set_meta(checksum_key(1), b"00000000")
    finally:
        eng.close()
    result = run("verify", path)
    assert result.exit_code == ExitCode.PROBLEM
    assert "zstd dictionary 1 fails its checksum" in result.stdout
