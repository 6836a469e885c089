"""The dbm engine's files stay bounded by what the queue holds, whatever its records' sizes:
the space of records taken, acked, purged or moved is reclaimed once it outgrows the live
data (or a few megabytes), not only once a thousand keys are dead."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from spoolq.engines.base import Lease
from spoolq.engines.dbm import DBMEngine

RECORD = 200_000
LIMIT = 24 << 20  # far below the 60 MB written


def _size(path: Path) -> int:
    return sum(os.path.getsize(path / name) for name in os.listdir(path))


def _cycle_take(e: DBMEngine, rec: bytes) -> None:
    e.append("default", [rec], [len(rec)], time.time())
    assert len(e.take("default", 1, time.time(), None)) == 1


def _cycle_ack(e: DBMEngine, rec: bytes) -> None:
    e.append("default", [rec], [len(rec)], time.time())
    [got] = e.take("default", 1, time.time(), Lease("me", time.time() + 60))
    assert e.ack("default", [(got.id, got.attempts)], "me") == [got.id]


def _cycle_purge(e: DBMEngine, rec: bytes) -> None:
    e.append("default", [rec], [len(rec)], time.time())
    assert e.purge("default") == 1


def _cycle_move(e: DBMEngine, rec: bytes) -> None:
    e.append("a", [rec], [len(rec)], time.time())
    assert e.move("a", "b") == 1
    assert len(e.take("b", 1, time.time(), None)) == 1


@pytest.mark.parametrize("cycle", [_cycle_take, _cycle_ack, _cycle_purge, _cycle_move])
def test_large_records_put_and_removed_do_not_pile_up(
        tmp_path: Path, cycle: Callable[[DBMEngine, bytes], None]) -> None:
    path = tmp_path / "q.dbm"
    e = DBMEngine(path)
    rec = os.urandom(RECORD)
    try:
        biggest = 0
        for _ in range(300):
            cycle(e, rec)
            biggest = max(biggest, _size(path))
        assert biggest < LIMIT, f"an empty queue grew to {biggest} bytes"
        assert e.counts("default").ready == 0
    finally:
        e.close()
    reopened = DBMEngine(path)
    try:
        assert reopened.take("default", 1, time.time(), None) == []
    finally:
        reopened.close()


def test_live_records_are_kept_by_the_compactions(tmp_path: Path) -> None:
    path = tmp_path / "q.dbm"
    e = DBMEngine(path)
    try:
        kept = [os.urandom(RECORD) for _ in range(5)]
        e.append("keep", kept, [RECORD] * 5, time.time())
        for _ in range(200):
            _cycle_take(e, os.urandom(RECORD))
        assert _size(path) < LIMIT
    finally:
        e.close()
    reopened = DBMEngine(path)
    try:
        assert [r.data for r in reopened.take("keep", 10, time.time(), None)] == kept
    finally:
        reopened.close()
