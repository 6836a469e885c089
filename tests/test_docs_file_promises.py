"""What README.md and docs/ promise about files, crashes and errors holds on real files."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import spoolq
from spoolq import SyncQueue

ROOT = Path(__file__).resolve().parent.parent


def _set_meta(path: Path, key: str, value: object) -> None:
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE spoolq_meta SET value = ? WHERE key = ?", (value, key))
    con.close()


@pytest.mark.parametrize("value", ["9", 9], ids=["text", "integer"])
def test_unknown_format_version_written_as_text_or_number_is_a_format_error(
        tmp_path: Path, value: object) -> None:
    # docs/file-format.md: a queue of an unknown format version raises FormatError naming
    # that version, and is left untouched. The sqlite3 shell writes '9' as text.
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(path) as q:
        q.put("kept")
    _set_meta(path, "format_version", value)
    with pytest.raises(spoolq.FormatError, match="format version 9;"):
        SyncQueue.create(path)


def test_format_version_written_as_text_one_opens(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(path) as q:
        q.put("kept")
    _set_meta(path, "format_version", "1")
    with SyncQueue.create(path) as q:
        assert q.get_nowait() == "kept"


def test_lease_given_back_by_close_is_a_dead_letter_named_owner_died(tmp_path: Path) -> None:
    # docs/leases.md: closing gives the lease back, which counts as a delivery.
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(path, max_attempts=1) as q:
        q.put("job")
        q.lease()
    con = sqlite3.connect(path)
    rows = con.execute("SELECT attempts, reason FROM spoolq_records").fetchall()
    con.close()
    assert rows == [(1, "owner died")]


@pytest.mark.parametrize("ext", ["sqlite", "lmdb", "dbm", "pickle"])
@pytest.mark.parametrize("durability", ["commit", "buffer"])
def test_a_killed_producer_keeps_what_it_was_told(tmp_path: Path, ext: str,
                                                  durability: str) -> None:
    # README.md and docs/durability.md: with "commit" a returned put survives SIGKILL; with
    # "buffer" the loss is at most the unwritten buffer (flush_items), and the file is sound.
    path = tmp_path / f"q.{ext}"
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, spoolq\n"
         "q = spoolq.SyncQueue.create(sys.argv[1], durability=sys.argv[2], flush_items=50,"
         " flush_interval=60)\n"
         "for n in range(10**9):\n"
         "    q.put(n)\n"
         "    print(n, flush=True)\n", str(path), durability],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert child.stdout is not None
    returned = -1
    while returned < 300:
        line = child.stdout.readline()
        assert line, "the producer ended before it was killed"
        returned = int(line)
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    tail = child.stdout.read().split()
    child.stdout.close()
    if tail:
        returned = int(tail[-1])
    with SyncQueue.create(path, durability=durability) as q:
        items = q.peek(10**6)
    assert items == list(range(len(items)))
    lost = returned + 1 - len(items)  # -1: the last put was stored, killed before its print
    if durability == "commit":
        assert lost in (-1, 0)
    else:
        assert -1 <= lost < 50


def test_a_meta_value_written_as_text_is_read_as_its_bytes(tmp_path: Path) -> None:
    from spoolq.engines.sqlite import SQLiteEngine

    path = tmp_path / "q.sqlite"
    with SyncQueue.create(path) as q:
        q.put("kept")
    con = sqlite3.connect(path)
    with con:
        con.execute("INSERT INTO spoolq_meta (key, value) VALUES ('note', ?)",
                    ("written by the sqlite3 shell",))
    con.close()
    eng = SQLiteEngine(str(path))
    try:
        assert eng.get_meta("note") == b"written by the sqlite3 shell"
    finally:
        eng.close()
