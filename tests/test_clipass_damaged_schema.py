"""An SQLite queue file whose schema is damaged so that SQLite's own error message holds
bytes that are not UTF-8: every command says the file is damaged (status 3), with no
traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import spoolq

from .cli_support import run_process


def _damaged(path: Path) -> Path:
    with spoolq.SyncQueue.create(str(path), name="jobs") as q:
        q.put_many([1, 2, 3])
    data = bytearray(path.read_bytes())
    at = data.index(b"UNIQUE", data.index(b"CREATE TABLE spoolq_queues")) + 6
    data[at:at + 3] = b"x\x90("  # a syntax error SQLite reports quoting the byte 0x90
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("args", [
    ["info"], ["verify"], ["peek", "-q", "jobs"], ["dump", "-q", "jobs"],
    ["requeue", "-q", "jobs", "--dead"], ["purge", "-q", "jobs", "--yes"], ["compact"],
])
def test_commands_on_a_file_with_a_damaged_schema_end_with_status_3(
        tmp_path: Path, args: list[str]) -> None:
    path = _damaged(tmp_path / "jobs.sqlite")
    result = run_process(args[0], str(path), *args[1:])
    assert "Traceback" not in result.stderr
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("Error: ") and "damaged" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_load_into_and_migrate_to_a_file_with_a_damaged_schema(tmp_path: Path) -> None:
    path = _damaged(tmp_path / "jobs.sqlite")
    lines = tmp_path / "items.jsonl"
    lines.write_text(json.dumps({"n": 1}) + "\n")
    source = tmp_path / "src.sqlite"
    with spoolq.SyncQueue.create(str(source), name="jobs") as q:
        q.put(1)
    for result in (run_process("load", str(path), str(lines), "-q", "jobs"),
                   run_process("migrate", str(source), str(path))):
        assert "Traceback" not in result.stderr
        assert result.returncode == 3, result.stderr
        assert result.stderr.startswith("Error: ") and "damaged" in result.stderr
