"""Following the docs step by step gives what they show: the cli.md session, the examples."""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

import spoolq
from spoolq.cli import main as cli_main
from spoolq.owners import new_owner

ROOT = Path(__file__).resolve().parent.parent
CLI_MD = (ROOT / "docs" / "cli.md").read_text()
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def _session_setup() -> tuple[str, str]:
    """The example session's Python block and its background worker's command line."""
    session = CLI_MD[CLI_MD.index("## An example session"):]
    block = re.search(r"^```python\n(.*?)^```", session, re.DOTALL | re.MULTILINE)
    worker = re.search(r"^\$ (python -c .*) &$", session, re.MULTILINE)
    assert block is not None and worker is not None, "the session must show how to start it"
    return block.group(1), worker.group(1)


def _info(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    with pytest.raises(SystemExit) as ended:
        cli_main(["info", "jobs.sqlite", "--json"])
    assert ended.value.code == 0
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return result


def test_the_cli_session_setup_gives_the_queues_and_leases_info_shows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, worker = _session_setup()
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "cli.md session", "exec"), {"__name__": "__doc_example__"})
    argv = shlex.split(worker)
    holder = subprocess.Popen([sys.executable, *argv[1:]], cwd=tmp_path, env=ENV)
    try:
        deadline = time.monotonic() + 30
        while True:
            queues = {q["name"]: q for q in _info(capsys)["queues"]}  # type: ignore[attr-defined]
            if queues["thumbnails"]["leased"] == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        holder.kill()
        holder.wait()
    shown = {"emails": (1196, 2, 2, "gone"), "sessions": (1, 0, 0, None),
             "thumbnails": (39, 1, 0, "running")}
    for name, (ready, leased, dead, process) in shown.items():
        q = queues[name]
        assert (q["ready"], q["leased"], q["dead"]) == (ready, leased, dead), name
        assert [o["process"] for o in q["lease_owners"]] == ([process] if process else [])


def test_the_lease_owners_cli_md_shows_have_the_shape_spoolq_writes() -> None:
    shape = [len(part.split("/")) for part in new_owner().split(":")]
    owners = re.findall(r"\bvm:[^\s\"]+", CLI_MD)
    assert owners
    for owner in owners:
        assert [len(part.split("/")) for part in owner.split(":")] == shape, owner


def test_the_shared_file_consumer_on_its_own_leaves_when_no_job_comes(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.sqlite")
    with spoolq.SyncQueue.create(path) as q:
        q.put_many([{"job": 1}, {"job": 2}])
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "shared_file_consumer.py"), path, "0.3"],
        check=False, capture_output=True, text=True, timeout=60, env=ENV)
    assert result.returncode == 0, result.stderr
    assert "handled 2 jobs" in result.stdout


def _console_output(command: str) -> tuple[list[str], int]:
    """The lines cli.md shows after ``$ command; echo "exit status $?"``, and that status."""
    start = CLI_MD.index(f"$ {command}; echo \"exit status $?\"\n")
    block = CLI_MD[start:CLI_MD.index("```", start)].splitlines()[1:]
    *lines, status = block
    assert status.startswith("exit status ")
    return lines, int(status.split()[-1])


def test_the_skip_bad_dump_cli_md_shows_is_what_the_session_file_gives_once_damaged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _worker = _session_setup()
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "cli.md session", "exec"), {"__name__": "__doc_example__"})
    with spoolq.SyncQueue.create("jobs.sqlite", name="thumbnails") as holder:
        holder.lease(ttl=300)  # as the session's background worker holds one
        with closing(sqlite3.connect("jobs.sqlite")) as db, db:
            (qno,) = db.execute(
                "SELECT qno FROM spoolq_queues WHERE name = 'thumbnails'").fetchone()
            for seq in (17, 18):
                (data,) = db.execute("SELECT data FROM spoolq_records WHERE id = ?",
                                     (qno << 40 | seq,)).fetchone()
                db.execute("UPDATE spoolq_records SET data = ? WHERE id = ?",
                           (data[:-1] + bytes([data[-1] ^ 0xFF]), qno << 40 | seq))
        command = "spoolq dump jobs.sqlite -q thumbnails --skip-bad -o thumbnails.jsonl"
        shown, status = _console_output(command)
        capsys.readouterr()
        with pytest.raises(SystemExit) as ended:
            cli_main(shlex.split(command)[1:])
    out, err = capsys.readouterr()
    assert ended.value.code == status
    assert sorted((out + err).splitlines()) == sorted(shown)
