"""A write whose commit succeeded is never run again: after a commit the LMDB engine
lengthens the file to its last page under a write transaction of its own, and another
process growing the map just then made that raise MDB_MAP_RESIZED, which the engine took
for a failed write and ran the write again (a put stored twice)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spoolq.engines import LMDBEngine
from spoolq.engines import _lmdbopen as opening

from .test_lmdb_map_growth_at_open import _grow_in_another_process


def test_a_map_grown_as_a_commit_is_covered_does_not_repeat_the_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "q.lmdb"
    LMDBEngine(path, map_size=65536).close()
    real = opening.cover_free_tail
    grown: list[int] = []

    def grown_first(env: Any, where: str) -> int:
        if not grown:  # another process grows the map between the commit and the cover
            _grow_in_another_process(path)
            grown.append(1)
            # What the cover does for a file that ends before its last page (after a
            # commit that freed pages it took): begin a write transaction.
            env.begin(write=True).abort()
        return real(env, where)

    monkeypatch.setattr(opening, "cover_free_tail", grown_first)
    eng = LMDBEngine(path, map_size=65536)
    try:
        eng.append("mine", [b"once"], [4], 1.0)
        assert grown
        assert [r.data for r in eng.peek("mine", 10)] == [b"once"]
        assert eng.counts("q").ready == 32  # the other process's records
    finally:
        eng.close()
