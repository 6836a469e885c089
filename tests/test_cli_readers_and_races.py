"""The spoolq command when its reader goes away, on outputs written at the same time,
and on files other programs change while it runs."""

from __future__ import annotations

import json
import os
import pickle
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import spoolq
from spoolq.cli import ExitCode, _sqlite
from spoolq.engines import Lease, open_engine

from .cli_support import ROOT, run


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return env


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _many(path: str, n: int = 5000) -> None:
    with spoolq.SyncQueue.create(path, serializer="json") as q:
        q.put_many([{"n": i, "text": "x" * 100} for i in range(n)])


@pytest.mark.skipif(not hasattr(signal, "SIGPIPE"), reason="no SIGPIPE here")
def test_dump_whose_reader_goes_away_ends_as_other_tools_do(tmp_path: Path) -> None:
    """``spoolq dump FILE | head -1`` exited with status 1 (click's way with a broken
    pipe); it now ends quietly, killed by SIGPIPE as ``cat`` or ``seq`` would be."""
    path = str(tmp_path / "q.sqlite")
    _many(path)
    proc = subprocess.Popen([sys.executable, "-m", "spoolq", "dump", path, "--chunk", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == -signal.SIGPIPE
    assert first.startswith(b'{"n":0,')
    assert err == b""


@pytest.mark.skipif(not hasattr(signal, "SIGPIPE"), reason="no SIGPIPE here")
@pytest.mark.parametrize("args", [
    ["dump"], ["peek"], ["peek", "--json"], ["info"], ["info", "--json"], ["verify"],
    ["verify", "--json"], ["--help"], ["--version"], ["dump", "--help"],
], ids="-".join)
def test_every_command_ends_quietly_when_its_output_cannot_be_read(tmp_path: Path,
                                                                  args: list[str]) -> None:
    """Tables (written by rich, which exits with status 1 on a broken pipe) and JSON
    alike: the command is killed by SIGPIPE and says nothing."""
    path = str(tmp_path / "q.sqlite")
    _many(path, 50)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        command = args if "--help" in args or "--version" in args else [args[0], path,
                                                                         *args[1:]]
        proc = subprocess.run([sys.executable, "-m", "spoolq", *command],
                              stdout=write_end, stderr=subprocess.PIPE, env=_env(),
                              timeout=60, check=False)
    finally:
        os.close(write_end)
    assert proc.returncode == -signal.SIGPIPE, proc.stderr
    assert proc.stderr == b""


def test_dump_o_leaves_a_file_named_like_its_old_temporary_alone(tmp_path: Path) -> None:
    """The temporary of ``dump -o OUT`` was always OUT.part: a file of that name was
    overwritten and then removed."""
    path = str(tmp_path / "q.sqlite")
    _many(path, 20)
    out = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.part").write_text("kept\n")
    result = run("dump", path, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.jsonl.part").read_text() == "kept\n"
    assert len(out.read_text().splitlines()) == 20
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("out")) == [
        "out.jsonl", "out.jsonl.part"]


def test_two_dumps_to_the_same_file_at_once_both_finish(tmp_path: Path) -> None:
    """Both wrote OUT.part: one moved the other's unfinished file into place, and the
    other then failed (status 3) or left OUT cut short."""
    path = str(tmp_path / "q.sqlite")
    _many(path, 20000)
    out = tmp_path / "out.jsonl"
    procs = [subprocess.Popen([sys.executable, "-m", "spoolq", "dump", path, "-o", str(out),
                               "--chunk", "50"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
             for _ in range(3)]
    results = [(proc.communicate(timeout=120)[1], proc.returncode) for proc in procs]
    assert [code for _, code in results] == [0, 0, 0], results
    assert len(out.read_text().splitlines()) == 20000
    assert [n for n in os.listdir(tmp_path) if n.startswith("out")] == ["out.jsonl"]


def _purge_on_a_terminal(path: str, meanwhile: Callable[[], None]) -> tuple[int, bytes]:
    """Run ``purge`` on a terminal, call ``meanwhile`` once it has asked, then answer yes."""
    env = _env()
    env.update(COLUMNS="200", LINES="40", TERM="dumb")
    main, side = pty.openpty()
    try:
        with subprocess.Popen([sys.executable, "-m", "spoolq", "purge", path],
                              stdin=side, stdout=side, stderr=side, env=env) as proc:
            os.close(side)
            side = -1
            shown = b""
            answered = False
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: every end of the terminal's side is closed
                    break
                if not chunk:
                    break
                shown += chunk
                if not answered and b"[y/N]" in shown:
                    meanwhile()
                    os.write(main, b"y\n")
                    answered = True
            return proc.wait(10), shown
    finally:
        os.close(main)
        if side >= 0:
            os.close(side)


def test_purge_deletes_no_item_put_after_its_question(tmp_path: Path) -> None:
    """The question counted the items in one open of the file and the purge deleted in
    another: items put while it asked were deleted too, more than were confirmed."""
    path = str(tmp_path / "q.sqlite")
    _many(path, 5)

    def put_more() -> None:
        with spoolq.SyncQueue.create(path, serializer="json") as q:
            q.put_many([{"late": i} for i in range(3)])

    code, shown = _purge_on_a_terminal(path, put_more)
    assert b"Delete 5 ready and 0 leased item(s)" in shown
    assert code == ExitCode.PROBLEM, shown
    assert b"nothing was deleted" in shown
    with spoolq.SyncQueue.create(path, serializer="json") as q:
        assert q.qsize() == 8


def test_purge_deletes_what_was_confirmed_when_items_left_meanwhile(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    _many(path, 5)

    def take_two() -> None:
        with spoolq.SyncQueue.create(path, serializer="json") as q:
            q.get_many(2)

    code, shown = _purge_on_a_terminal(path, take_two)
    assert code == 0, shown
    assert b"deleted 3 item(s)" in shown
    with spoolq.SyncQueue.create(path, serializer="json") as q:
        assert q.qsize() == 0


@pytest.mark.skipif(sys.platform == "win32", reason="file names are not bytes there")
@pytest.mark.parametrize("encoding", ["utf-8", "utf-8:surrogateescape"])
@pytest.mark.parametrize("args", [
    ["info"], ["info", "--json"], ["verify"], ["verify", "--json"], ["load", "-q", "jobs"],
    ["compact"], ["compact", "--json"], ["migrate"],
], ids=" ".join)
def test_a_file_name_that_is_not_utf8_is_shown_and_given_in_json(tmp_path: Path,
                                                                 encoding: str,
                                                                 args: list[str]) -> None:
    """A table or line naming the file failed with a traceback (UnicodeEncodeError) on a
    UTF-8 terminal, and --json wrote bytes that are not UTF-8 where stdout lets them
    through; JSON now escapes the name (os.fsencode gives its bytes back)."""
    name = os.fsencode(tmp_path) + b"/jobs\xff.pickle"
    with spoolq.SyncQueue.create(os.fsdecode(name), name="jobs") as q:
        q.put_many([{"n": 1}, {"n": 2}])
    env = _env()
    env["PYTHONIOENCODING"] = encoding
    extra = {"migrate": [os.fsencode(tmp_path) + b"/copy\xfe.pickle"],
             "load": [str(tmp_path / "items.jsonl")]}.get(args[0], [])
    (tmp_path / "items.jsonl").write_text('{"n": 3}\n')
    proc = subprocess.run([sys.executable, "-m", "spoolq", args[0], name, *extra, *args[1:]],
                          capture_output=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.decode("utf-8")  # strict: every byte is UTF-8
    assert "jobs\\xff.pickle" in text or "--json" in args
    if "--json" in args:
        assert os.fsencode(json.loads(text)["path"]) == name


@pytest.mark.skipif(sys.platform == "win32", reason="file names are not bytes there")
def test_sqlite_quick_check_reads_a_file_whose_name_is_not_utf8(tmp_path: Path) -> None:
    """The read-only URI was quoted from the name as text, which UTF-8 cannot encode
    (UnicodeEncodeError); its bytes are quoted now."""
    name = os.fsdecode(os.fsencode(tmp_path) + b"/jobs\xff?#%.sqlite")
    with spoolq.SyncQueue.create(str(tmp_path / "plain.sqlite")) as q:
        q.put({"n": 1})
    os.rename(tmp_path / "plain.sqlite", name)
    assert _sqlite.quick_check(name) == []


@pytest.mark.parametrize("args", [
    ["info"], ["info", "--json"], ["peek"], ["peek", "--json"], ["peek", "--leased"],
    ["peek", "--leased", "--json"], ["peek", "--offset", "1"], ["peek", "--offset", "2"],
], ids=" ".join)
def test_times_that_are_not_finite_numbers_are_shown_and_json_stays_json(
        tmp_path: Path, args: list[str]) -> None:
    """A record whose enqueue time (or a lease whose expiry) in the file is NaN or
    infinite, as a damaged file or a foreign writer may hold, made the tables fail with a
    traceback (ValueError: cannot convert float NaN to integer) and --json write NaN and
    Infinity, which JSON parsers refuse; such a time is now shown as ? and given as null."""
    path = str(tmp_path / "q.pickle")
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        q.put_many([{"n": n} for n in range(4)])
    eng = open_engine(path)
    try:
        assert eng.take("jobs", 1, time.time(), Lease("elsewhere.invalid:1:0:x", float("inf")))
    finally:
        eng.close()
    # The engine refuses a NaN time, and reads a file holding one as damaged; infinite
    # enqueue times, which a foreign writer may set, it reads (the tables and JSON go
    # through the same check of finite numbers for both).
    with open(path, "rb") as f:
        state = pickle.loads(pickle.load(f)["body"])
    state["meta"]["format_version"] = b"1"  # a file of version 1 has no checksum to redo
    records = state["queues"]["jobs"]
    for i, stamp in enumerate((float("inf"), float("-inf"), float("inf")), start=1):
        records[i] = (*records[i][:4], stamp, *records[i][5:])
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=5)
    result = run(args[0], path, *(["-q", "jobs"] if args[0] == "peek" else []), *args[1:])
    assert result.exit_code == 0, result.output
    if "--json" in args:
        def refuse(constant: str) -> None:
            raise AssertionError(f"{constant} is not JSON")

        json.loads(result.stdout, parse_constant=refuse)
    else:
        assert "?" in result.stdout


def test_dump_to_a_closed_stdout_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    """With its standard output closed (``>&-``), dump failed with a traceback
    (AttributeError: 'NoneType' object has no attribute 'buffer')."""
    path = str(tmp_path / "q.sqlite")
    _many(path, 3)
    proc = subprocess.run(["sh", "-c", 'exec "$0" -m spoolq dump "$1" >&-', sys.executable,
                           path], capture_output=True, text=True, env=_env(), timeout=60,
                          check=False)
    assert proc.returncode == ExitCode.FILE, proc.stderr
    assert proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize(("queue_file", "side"), [
    ("q.sqlite", "-wal"), ("q.sqlite", "-shm"), ("q.lmdb", "-lock"), ("q.pickle", ".lock"),
])
def test_dump_o_refuses_a_file_the_engine_keeps_beside_the_queue(tmp_path: Path,
                                                               queue_file: str,
                                                               side: str) -> None:
    """``-o jobs.sqlite-wal`` replaced the WAL (committed items not yet copied into the
    file were lost) and ``-o jobs.pickle.lock`` the lock file (a second writer could then
    lock a file of its own); only the queue file itself was refused."""
    path = str(tmp_path / queue_file)
    q = spoolq.SyncQueue.create(path, serializer="json")
    try:
        q.put_many([{"n": i} for i in range(5)])
        before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
        result = run("dump", path, "-o", path + side)
        assert result.exit_code == ExitCode.USAGE, result.output
        assert "would overwrite" in result.stderr
        assert {name: (tmp_path / name).read_bytes() for name in before} == before
    finally:
        q.close()


@pytest.mark.parametrize(("args", "code"), [
    (["purge", "-q", "jobs"], ExitCode.PROBLEM), (["load", "-", "-q", "jobs"], ExitCode.FILE),
], ids=["purge", "load-stdin"])
def test_a_closed_stdin_is_an_error_not_a_traceback(tmp_path: Path, args: list[str],
                                                     code: int) -> None:
    """With standard input closed (``<&-``), purge's check for a terminal and load's
    read of ``-`` failed with a traceback (AttributeError on None)."""
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        q.put_many([1, 2, 3])
    proc = subprocess.run(["sh", "-c", 'exec "$0" -m spoolq "$@" <&-', sys.executable,
                           args[0], path, *args[1:]], capture_output=True, text=True,
                          env=_env(), timeout=60, check=False)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        assert q.qsize() == 3


@pytest.mark.parametrize("args", [["info"], ["peek", "--leased"], ["requeue", "--leased"],
                                  ["verify"]], ids=" ".join)
def test_control_characters_from_the_file_reach_no_terminal(tmp_path: Path,
                                                            args: list[str]) -> None:
    """Queue names and lease owners come from the file, written by any program: their
    escape sequences (colours, a window title, a cleared screen) and line breaks went
    to the terminal as they were; they are shown as \\x1b escapes now."""
    path = str(tmp_path / "q.sqlite")
    name = "jobs\x1b[2J\x1b]0;title\x07\nfake row\x9b"
    owner = "host\x1b[31m.invalid:1:0:x"
    with spoolq.SyncQueue.create(path, name=name) as q:
        q.put_many([1, 2])
    eng = open_engine(path)
    try:
        assert eng.take(name, 1, time.time(), Lease(owner, time.time() + 3600))
    finally:
        eng.close()
    extra = [] if args[0] in ("info", "verify") else ["-q", name]
    result = run(args[0], path, *extra, *args[1:])
    assert result.exit_code in (0, ExitCode.PROBLEM), result.output
    for control in ("\x1b", "\x07", "\x9b", "\nfake row"):
        assert control not in result.stdout
    assert "jobs\\x1b[2J" in result.stdout  # a table may fold the rest over lines


def test_main_called_in_process_exits_instead_of_killing_its_caller(tmp_path: Path) -> None:
    """A program calling ``spoolq.cli.main([...])`` whose output reader went away was
    killed by SIGPIPE with it; ``main`` now raises SystemExit(1) as click would, and only
    the command itself ends by SIGPIPE."""
    path = str(tmp_path / "q.sqlite")
    _many(path, 50)
    program = (
        "import sys\n"
        "from spoolq.cli import main\n"
        "try:\n"
        f"    main(['dump', {path!r}])\n"
        "except SystemExit as exc:\n"
        "    sys.stderr.write(f'caller goes on after exit {exc.code}')\n"
    )
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-c", program], stdout=write_end,
                              stderr=subprocess.PIPE, env=_env(), timeout=60, check=False)
    finally:
        os.close(write_end)
    assert b"caller goes on after exit 1" in proc.stderr, proc.stderr
    assert proc.returncode != -signal.SIGPIPE
