"""A dbm queue opened by a relative path stays the queue it opened when the process then
changes its working directory: its calls, compactions and close reach its own files, never
a same-named queue in the new directory (whose lock this process does not hold)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from spoolq.engines import _dbmgenerations
from spoolq.engines.dbm import DBMEngine


def _all(e: DBMEngine) -> list[bytes]:
    return [r.data for r in e.take("default", 100, time.time(), None)]


def test_calls_after_a_chdir_reach_the_queue_opened(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    other = DBMEngine(second / "q.dbm")  # another queue under the same relative name
    other.append("default", [b"theirs"], [6], time.time())
    other.close()
    monkeypatch.chdir(first)
    e = DBMEngine("q.dbm")
    try:
        e.append("default", [b"one"], [3], time.time())
        monkeypatch.chdir(second)
        e.append("default", [b"two"], [3], time.time())
        assert e.peek("default", 10)[1].data == b"two"
    finally:
        e.close()
    mine, theirs = DBMEngine(first / "q.dbm"), DBMEngine(second / "q.dbm")
    try:
        assert _all(mine) == [b"one", b"two"]
        assert _all(theirs) == [b"theirs"]
    finally:
        mine.close()
        theirs.close()


def test_a_compaction_after_a_chdir_stays_in_the_queue(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dbmgenerations, "_COMPACT_MIN", 2)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    e = DBMEngine("q.dbm")
    try:
        e.append("default", [b"kept"], [4], time.time())
        monkeypatch.chdir(tmp_path / "elsewhere")
        for n in range(10):
            e.append("default", [b"x%d" % n], [2], time.time())
            e.take("default", 1, time.time(), None)
    finally:
        e.close()
    assert os.listdir(tmp_path / "elsewhere") == []
    reopened = DBMEngine(tmp_path / "q.dbm")
    try:
        assert _all(reopened) == [b"x9"]
    finally:
        reopened.close()
