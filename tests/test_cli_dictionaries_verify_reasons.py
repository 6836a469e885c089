"""``spoolq verify`` says why each damaged zstd dictionary is damaged: it fails its checksum,
zstd cannot load it, or the file lost it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

import spoolq
from spoolq.cli import ExitCode
from spoolq.engines import open_engine
from spoolq.zdict import DICTIONARY_QUEUE, SAMPLE_COUNT, checksum_key

from .cli_support import run
from .test_zstd_dict import damage_first_dictionary


def _queue_with_a_dictionary(path: str) -> None:
    items = [{"n": i, "text": f"the quick brown fox {i} jumps over the lazy dog " * 5}
             for i in range(SAMPLE_COUNT + 5)]
    with spoolq.SyncQueue.create(path, compressor="zstd-dict") as q:
        q.put_many(items[:SAMPLE_COUNT])
        q.put_many(items[SAMPLE_COUNT:])  # compressed with dictionary 1


def _fails_its_checksum(path: str) -> None:
    eng = open_engine(path)
    try:
        eng.set_meta(checksum_key(1), b"00000000")
    finally:
        eng.close()


def _cannot_be_loaded(path: str) -> None:
    # a file from before checksums: the dictionary's magic number damaged
    damage_first_dictionary(path, 0, 0x01, drop_checksum=True)


def _lost(path: str) -> None:
    db = sqlite3.connect(path)
    try:
        with db:
            (qno,) = db.execute("SELECT qno FROM spoolq_queues WHERE name = ?",
                                (DICTIONARY_QUEUE,)).fetchone()
            db.execute("DELETE FROM spoolq_records WHERE id >> 40 = ?", (qno,))
    finally:
        db.close()


@pytest.mark.parametrize(("damage", "reason", "not_said"), [
    (_fails_its_checksum, "zstd dictionary 1 fails its checksum", "cannot load"),
    (_cannot_be_loaded, "zstd dictionary 1 is damaged: zstd cannot load it (",
     "fails its checksum"),
    (_lost, "zstd dictionary 1 is missing (the file keeps its checksum, not the "
     "dictionary)", "fails its checksum"),
])
def test_verify_says_why_a_zstd_dictionary_is_damaged(
        tmp_path: Path, damage: object, reason: str, not_said: str) -> None:
    path = str(tmp_path / "z.sqlite")
    _queue_with_a_dictionary(path)
    assert run("verify", path).exit_code == 0
    assert callable(damage)
    damage(path)

    result = run("verify", path)
    assert result.exit_code == ExitCode.PROBLEM
    [line] = [line for line in result.stdout.splitlines() if "problem: zstd dictionary" in line]
    assert reason in line and not_said not in line
    assert line.endswith("the records compressed with it cannot be decoded")

    report = json.loads(run("verify", path, "--json").stdout)
    assert report["problems"][0].startswith(reason)
    # and the five records that need it are problems too, each named
    assert report["problem_count"] == 6
    assert all("dictionary 1" in problem for problem in report["problems"][1:])
