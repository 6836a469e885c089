"""Two processes training zstd dictionaries at once in a file that lost a dictionary: each
keeps the lost number's place with an empty record, and the second one's lands after the
first one's dictionary. That record never held a dictionary and is no damage; the lost
dictionary, and a dictionary really damaged, are still reported."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import spoolq
from spoolq.codec import Codec, record_dictionary
from spoolq.engines import open_engine
from spoolq.zdict import (
    DICTIONARY_QUEUE,
    SAMPLE_COUNT,
    checksum_key,
    dictionary_damage,
    load_dictionaries,
)

from .cli_support import run
from .conftest import SHARED_ENGINES, queue_path

MISSING = "it is missing (the file keeps its checksum, not the dictionary)"

# Puts enough items into queue argv[2] to train its dictionary; the training's append to
# the dictionary queue says "ready" and waits for a line on stdin, so that both processes
# have looked for lost dictionaries before either appends.
TRAINER = textwrap.dedent("""
    import sys
    import spoolq, spoolq.writing as writing
    from spoolq.zdict import DICTIONARY_QUEUE, train_dictionary

    class Paused:
        def __init__(self, engine):
            self._engine = engine
        def __getattr__(self, name):
            return getattr(self._engine, name)
        def append(self, queue, *args, **kwargs):
            if queue == DICTIONARY_QUEUE:
                print("ready", flush=True)
                sys.stdin.readline()
            return self._engine.append(queue, *args, **kwargs)

    writing.train_dictionary = lambda engine, name, codec: train_dictionary(
        Paused(engine), name, codec)
    path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    items = [{"q": name, "n": i, "text": f"{name} event {i % 37} at /page/{i % 53}"}
             for i in range(count)]
    with spoolq.SyncQueue.create(path, name=name, compressor="zstd-dict") as q:
        q.put_many(items[:-5])
        q.put_many(items[-5:])
    print("done", flush=True)
""")


def _items(name: str, count: int) -> list[dict[str, object]]:
    return [{"q": name, "n": i, "text": f"{name} event {i % 37} at /page/{i % 53}"}
            for i in range(count)]


def _lose_dictionaries(path: str) -> None:
    """Remove the file's dictionary records, keeping their checksums, as damage that drops
    them would."""
    engine = open_engine(path)
    try:
        assert len(engine.take(DICTIONARY_QUEUE, 255, time.time(), None)) == 1
    finally:
        engine.close()


def _train_at_once(path: str, names: list[str], count: int) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", TRAINER, path, name, str(count)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for name in names]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "done"
            assert proc.wait(30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


@pytest.fixture(params=SHARED_ENGINES)
def raced(tmp_path: Path, request: pytest.FixtureRequest
          ) -> tuple[str, list[dict[str, object]], int]:
    """A file whose dictionary 1 (queue "a"'s) was lost, where queues "b" and "c" then
    trained their dictionaries at the same moment in two processes."""
    path = queue_path(tmp_path, str(request.param))
    count = SAMPLE_COUNT + 5
    with spoolq.SyncQueue.create(path, name="a", compressor="zstd-dict") as q:
        q.put_many(_items("a", count)[:-5])
        q.put_many(_items("a", count)[-5:])  # compressed with dictionary 1
    _lose_dictionaries(path)
    _train_at_once(path, ["b", "c"], count)
    return path, _items("a", count), count


def test_the_place_kept_by_the_training_that_lost_the_race_is_no_damage(
        raced: tuple[str, list[dict[str, object]], int],
        caplog: pytest.LogCaptureFixture) -> None:
    path, _a_items, count = raced
    engine = open_engine(path, read_only=True)
    try:
        held = engine.peek(DICTIONARY_QUEUE, 255)
        # both kept number 1's place: one in front of each dictionary
        assert [rec.data == b"" for rec in held] == [True, False, True, False]
        assert engine.get_meta(checksum_key(3)) is None
        assert dictionary_damage(engine) == [(1, MISSING)]  # what spoolq verify reports
        used = {name: {record_dictionary(rec.data) for rec in engine.peek(name, count)}
                for name in ("b", "c")}
        assert sorted(used["b"] | used["c"]) == [0, 2, 4]
    finally:
        engine.close()
    report = json.loads(run("verify", path, "--json").stdout)
    assert report["problems"][0].startswith(f"zstd dictionary 1 {MISSING[3:]}")
    assert report["problem_count"] == 6  # and the five records of "a" that need it
    assert not any("dictionary 3" in problem for problem in report["problems"])
    caplog.set_level(logging.WARNING, logger="spoolq")
    for name in ("b", "c"):
        with spoolq.SyncQueue.create(path, name=name) as q:
            assert q.get_many(None) == _items(name, count)
            assert q.stats["dead"] == 0
    damage = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert damage and all("zstd dictionary 1 of the file is damaged" in m for m in damage)


def test_a_lost_dictionary_stays_reported_and_its_records_fail_after_the_race(
        raced: tuple[str, list[dict[str, object]], int],
        caplog: pytest.LogCaptureFixture) -> None:
    path, a_items, _count = raced
    with spoolq.SyncQueue.create(path, name="a") as q:
        got = q.get_many(None)
        assert got == a_items[:len(got)] and len(got) == SAMPLE_COUNT
        assert q.stats["dead"] == 5
        with pytest.raises(spoolq.CorruptError, match=f"dictionary 1 of the file is damaged: "
                                                      f"{MISSING[:13]}"):
            q.peek(dead=True)
    assert "zstd dictionary 1 of the file is damaged: it is missing" in caplog.text
    assert "zstd dictionary 3" not in caplog.text


def test_a_damaged_dictionary_is_still_reported_after_the_race(
        raced: tuple[str, list[dict[str, object]], int],
        caplog: pytest.LogCaptureFixture) -> None:
    path, _a_items, count = raced
    engine = open_engine(path)
    try:  # another checksum for dictionary 4
        engine.set_meta(checksum_key(4), b"00000000")
    finally:
        engine.close()
    engine = open_engine(path, read_only=True)
    try:
        assert dictionary_damage(engine) == [(1, MISSING), (4, "it fails its checksum")]
        owner = next(name for name in ("b", "c")
                     if record_dictionary(engine.peek(name, 1, offset=count - 1)[0].data) == 4)
    finally:
        engine.close()
    with spoolq.SyncQueue.create(path, name=owner) as q:
        got = q.get_many(None)
        assert got == _items(owner, count)[:len(got)]
        assert q.stats["dead"] == 5
    assert "zstd dictionary 4 of the file is damaged: it fails its checksum" in caplog.text
    assert "zstd dictionary 3" not in caplog.text


def test_a_record_naming_the_kept_place_is_refused_not_decoded_with_another_dictionary(
        raced: tuple[str, list[dict[str, object]], int]) -> None:
    path, _a_items, _count = raced
    item = {"text": "b event 1 at /page/1 " * 40}
    engine = open_engine(path, read_only=True)
    try:
        held = engine.peek(DICTIONARY_QUEUE, 255)
        writer = Codec(compressor="zstd-dict")  # a record compressed with a dictionary 3
        writer.add_dictionary(3, held[3].data, activate=True)
        record, _raw = writer.encode(item)
        assert record_dictionary(record) == 3
        reader = Codec(compressor="zstd-dict")
        load_dictionaries(engine, "b", reader)
    finally:
        engine.close()
    with pytest.raises(spoolq.CorruptError,
                       match="zstd dictionary 3 of the file: it never held a dictionary"):
        reader.decode(record)
