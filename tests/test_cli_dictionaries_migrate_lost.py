"""``spoolq migrate`` with zstd dictionaries a file lost (their checksums kept): their numbers
stay taken in the destination, so records that needed one stay damaged there, never
decoded with a dictionary trained later or copied in under the same number."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import spoolq
from spoolq.cli import ExitCode
from spoolq.codec import record_dictionary
from spoolq.engines import open_engine
from spoolq.zdict import DICTIONARY_QUEUE, SAMPLE_COUNT, checksum_key, dictionary_damage

from .cli_support import run

MISSING = "is missing (the file keeps its checksum, not the dictionary)"


def _items(word: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"n": i, "text": f"{word} the quick brown fox {i} jumps over the lazy dog " * 5}
            for i in range(start, start + n)]


def _queue_with_a_dictionary(path: str, name: str, word: str) -> list[dict[str, Any]]:
    """Queue ``name`` whose last five items need the dictionary it trained."""
    items = _items(word, SAMPLE_COUNT + 5)
    with spoolq.SyncQueue.create(path, name=name, compressor="zstd-dict") as q:
        q.put_many(items[:SAMPLE_COUNT])
        q.put_many(items[SAMPLE_COUNT:])
    return items


def _lose_the_dictionaries(path: str) -> None:
    """Delete the records of the file's dictionaries; their checksums stay."""
    db = sqlite3.connect(path)
    try:
        with db:
            (qno,) = db.execute("SELECT qno FROM spoolq_queues WHERE name = ?",
                                (DICTIONARY_QUEUE,)).fetchone()
            db.execute("DELETE FROM spoolq_records WHERE id >> 40 = ?", (qno,))
    finally:
        db.close()


def _dumped(path: str, queue: str) -> tuple[list[Any], list[str]]:
    """The items ``dump --skip-bad`` writes, and its lines naming records left out."""
    result = run("dump", path, "-q", queue, "--skip-bad")
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert result.exit_code == (ExitCode.PROBLEM if skipped else 0), result.output
    return [json.loads(line) for line in result.stdout.splitlines()], skipped


def test_migrate_keeps_the_number_of_a_lost_dictionary_taken(tmp_path: Path) -> None:
    src, dst = str(tmp_path / "src.sqlite"), str(tmp_path / "dst.sqlite")
    items = _queue_with_a_dictionary(src, "z", "hello")
    _lose_the_dictionaries(src)

    result = run("migrate", src, dst)
    assert result.exit_code == 0, result.output
    source, copy = open_engine(src, read_only=True), open_engine(dst, read_only=True)
    try:
        assert copy.get_meta(checksum_key(1)) == source.get_meta(checksum_key(1)) is not None
        assert [rec.data for rec in copy.peek(DICTIONARY_QUEUE, 255)] == [b""]
        assert [number for number, _why in dictionary_damage(copy)] == [1]
    finally:
        source.close()
        copy.close()
    verified = run("verify", dst)
    assert verified.exit_code == ExitCode.PROBLEM
    assert f"zstd dictionary 1 {MISSING}" in verified.stdout

    # the destination's queue trains a dictionary of its own: a number after the lost one
    later = _items("goodbye", SAMPLE_COUNT + 5, start=10_000)
    with spoolq.SyncQueue.create(dst, name="z") as q:
        q.put_many(later[:SAMPLE_COUNT])
        q.put_many(later[SAMPLE_COUNT:])
    copy = open_engine(dst, read_only=True)
    try:
        assert len(copy.peek(DICTIONARY_QUEUE, 255)) == 2
        assert {record_dictionary(rec.data) for rec in copy.peek("z", 100_000)} == {0, 1, 2}
    finally:
        copy.close()
    dumped, skipped = _dumped(dst, "z")
    assert dumped == items[:SAMPLE_COUNT] + later
    assert len(skipped) == 5 and all(MISSING in line for line in skipped)


def test_migrate_copies_no_dictionary_into_the_place_of_one_the_destination_lost(
        tmp_path: Path) -> None:
    src, dst = str(tmp_path / "src.sqlite"), str(tmp_path / "dst.sqlite")
    dst_items = _queue_with_a_dictionary(dst, "z", "hello")
    _lose_the_dictionaries(dst)
    src_items = _queue_with_a_dictionary(src, "zs", "goodbye")
    with spoolq.SyncQueue.create(src, name="plain") as q:
        q.put_many([{"n": n} for n in range(10)])

    # a copied record needs the source's dictionary 1, which the destination lost: refused
    refused = run("migrate", src, dst, "-q", "zs")
    assert refused.exit_code == ExitCode.PROBLEM
    assert "needs zstd dictionary 1, and the destination's dictionary 1 is another one" \
        in refused.stderr
    # a queue needing none is copied; the source's dictionary stays out of the lost one's place
    result = run("migrate", src, dst, "-q", "plain")
    assert result.exit_code == 0, result.output
    dumped, skipped = _dumped(dst, "plain")
    assert dumped == [{"n": n} for n in range(10)] and skipped == []
    dumped, skipped = _dumped(dst, "z")
    assert dumped == dst_items[:SAMPLE_COUNT]
    assert len(skipped) == 5 and all(MISSING in line for line in skipped)
    assert _dumped(src, "zs") == (src_items, [])
