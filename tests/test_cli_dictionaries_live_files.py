"""``dump``, ``peek`` and ``verify`` on files whose zstd dictionaries change or are gone while
they read: a dictionary trained after the command opened the file is loaded when a record
first needs it, and a record whose dictionary the file does not hold is damaged."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import spoolq
from spoolq.cli import ExitCode
from spoolq.cli._decoding import Decoder
from spoolq.codec import record_dictionary
from spoolq.engines import Engine, StoredRecord, open_engine
from spoolq.zdict import DICTIONARY_QUEUE, SAMPLE_COUNT, checksum_key

from .cli_support import ROOT, run, run_json


def _items(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"n": i, "text": f"the quick brown fox {i} jumps over the lazy dog " * 5}
            for i in range(start, start + n)]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p))


def _dictionaries_needed(path: str, queue: str = "default") -> set[int]:
    eng = open_engine(path, read_only=True)
    try:
        return {record_dictionary(rec.data) for rec in eng.peek(queue, 100_000)}
    finally:
        eng.close()


def test_dump_decodes_records_of_a_dictionary_trained_after_it_opened_the_file(
        tmp_path: Path) -> None:
    path = str(tmp_path / "live.sqlite")
    before, after = _items(SAMPLE_COUNT - 1), _items(300, start=SAMPLE_COUNT - 1)
    with spoolq.SyncQueue.create(path, compressor="zstd-dict") as q:
        q.put_many(before)  # one sample short of a dictionary
        with subprocess.Popen([sys.executable, "-m", "spoolq", "dump", path, "--chunk", "50"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=_env()) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            # dump has opened the file; it blocks once the pipe is full, far from the end
            lines = [proc.stdout.readline()]
            q.put_many(after[:1])  # the last sample: the writer trains dictionary 1
            q.put_many(after[1:])  # compressed with it
            lines += proc.stdout.read().splitlines()
            err = proc.stderr.read().decode()
    assert proc.returncode == 0, err
    assert _dictionaries_needed(path) >= {0, 1}
    assert [json.loads(line) for line in lines] == before + after


def _lose_every_dictionary(path: str) -> None:
    """Delete the file's dictionaries and their checksums, as damage to a file from before
    checksums would: no trace is left of what the records need."""
    db = sqlite3.connect(path)
    try:
        with db:
            (qno,) = db.execute("SELECT qno FROM spoolq_queues WHERE name = ?",
                                (DICTIONARY_QUEUE,)).fetchone()
            db.execute("DELETE FROM spoolq_records WHERE id >> 40 = ?", (qno,))
            db.execute("DELETE FROM spoolq_meta WHERE key = ?", (checksum_key(1),))
    finally:
        db.close()


def _file_without_its_dictionary(tmp_path: Path) -> tuple[str, list[int]]:
    """Queue ``default`` of items compressed with dictionary 1, which the file then loses;
    the ids of the records needing it."""
    path = str(tmp_path / "lost.sqlite")
    with spoolq.SyncQueue.create(path, compressor="zstd-dict") as q:
        q.put_many(_items(SAMPLE_COUNT))
        q.put_many(_items(5, start=SAMPLE_COUNT))
    eng = open_engine(path, read_only=True)
    try:
        needing = [rec.id for rec in eng.peek("default", 100_000)
                   if record_dictionary(rec.data) == 1]
    finally:
        eng.close()
    assert len(needing) == 5
    _lose_every_dictionary(path)
    return path, needing


def test_a_record_whose_dictionary_the_file_does_not_hold_is_damaged(tmp_path: Path) -> None:
    path, needing = _file_without_its_dictionary(tmp_path)
    note = "needs zstd dictionary 1, which the file does not hold: the record cannot be decoded"
    shown = run_json("peek", path, "-n", "3", "--offset", str(SAMPLE_COUNT))["records"]
    assert [rec["id"] for rec in shown] == needing[:3]
    assert all(note in rec["note"] and "raw" in rec for rec in shown)

    result = run("dump", path, "--skip-bad")
    assert result.exit_code == ExitCode.PROBLEM
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert [line.split(":")[0] for line in skipped] == [
        f"skipped record {i} of 'default'" for i in needing]
    assert all(note in line for line in skipped)
    assert len(result.stdout.splitlines()) == SAMPLE_COUNT

    result = run("verify", path, "--json")
    assert result.exit_code == ExitCode.PROBLEM
    report = json.loads(result.stdout)
    assert report["problem_count"] == 5
    assert all(note in line for line in report["problems"])


class _CountingDictionaryReads:
    """A real engine that counts the reads of the whole dictionary queue (one a load)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.loads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        if queue == DICTIONARY_QUEUE and n >= 255:
            self.loads += 1
        return self.engine.peek(queue, n, offset)


def test_the_dictionaries_are_loaded_again_once_for_each_number_missed(
        tmp_path: Path) -> None:
    path, _needing = _file_without_its_dictionary(tmp_path)
    eng = open_engine(path, read_only=True)
    try:
        counting = _CountingDictionaryReads(eng)
        decoder = Decoder(counting)  # type: ignore[arg-type]
        assert counting.loads == 1
        decoded = [decoder.decode(rec) for rec in eng.peek("default", 100_000)]
    finally:
        eng.close()
    assert [d.status for d in decoded] == ["ok"] * SAMPLE_COUNT + ["damaged"] * 5
    assert counting.loads == 2


class _DictionaryReadFailsOnce(_CountingDictionaryReads):
    """A real engine whose second load of the dictionaries fails, as a lost connection
    makes it."""

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        if queue == DICTIONARY_QUEUE and n >= 255 and self.loads == 1:
            self.loads += 1
            raise spoolq.EngineError("the connection to the server was lost")
        return super().peek(queue, n, offset)


def test_a_failed_load_of_the_dictionaries_is_tried_again_by_the_next_record(
        tmp_path: Path) -> None:
    path = str(tmp_path / "live.sqlite")
    with spoolq.SyncQueue.create(path, compressor="zstd-dict") as q:
        q.put_many(_items(SAMPLE_COUNT - 1))  # one sample short of a dictionary
        eng = open_engine(path, read_only=True)
        try:
            failing = _DictionaryReadFailsOnce(eng)
            decoder = Decoder(failing)  # type: ignore[arg-type]
            q.put_many(_items(1, start=SAMPLE_COUNT - 1))  # the writer trains dictionary 1
            q.put_many(_items(300, start=SAMPLE_COUNT))  # compressed with it
            tail = [rec for rec in eng.peek("default", 100_000)
                    if record_dictionary(rec.data) == 1][:2]
            first, second = (decoder.decode(rec) for rec in tail)
        finally:
            eng.close()
    assert first.status == "damaged" and "could not be read" in first.note
    assert second.status == "ok"
