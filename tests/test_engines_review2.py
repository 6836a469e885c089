"""SQLite, LMDB and memory engines: small maps, processes sharing a file, and the memory
engine answering as the disk engines do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolq.engines import Engine, LMDBEngine, MemoryEngine, SQLiteEngine, StoredRecord


def _open(kind: str, tmp_path: Path) -> Engine:
    if kind == "sqlite":
        return SQLiteEngine(tmp_path / "q.sqlite")
    if kind == "lmdb":
        return LMDBEngine(tmp_path / "q.lmdb")
    return MemoryEngine()


@pytest.fixture(params=["sqlite", "lmdb", "memory"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    eng = _open(str(request.param), tmp_path)
    yield eng
    eng.close()


@pytest.mark.parametrize("map_size", [4096, 8192, 16384])
def test_a_new_lmdb_file_with_a_small_map_grows_it_instead_of_failing(tmp_path: Path,
                                                                       map_size: int) -> None:
    path = tmp_path / "q.lmdb"
    eng = LMDBEngine(path, map_size=map_size)
    try:
        assert eng.append("q", [b"a", b"b"], [1, 1], 1.0) == [1, 2]
    finally:
        eng.close()
    eng = LMDBEngine(path, map_size=map_size, read_only=True)
    try:
        assert [r.data for r in eng.peek("q", 5)] == [b"a", b"b"]
    finally:
        eng.close()


@pytest.mark.parametrize("ident", [0, -1, 3, 1 << 40 | 1, 1 << 64])
def test_a_restore_of_an_id_the_queue_never_gave_out_is_refused(engine: Engine,
                                                                 ident: int) -> None:
    """Such a record would sit outside every queue (SQLite), or be overwritten (LMDB) or
    doubled (memory) by the put that gets its id; later puts failed for good on SQLite."""
    engine.append("q", [b"a"], [1], 1.0)
    engine.append("other", [b"o"], [1], 1.0)
    with pytest.raises(ValueError, match="never gave out"):
        engine.restore("q", [StoredRecord(ident, b"stray", 5, 0, 1.0)])
    assert [r.data for r in engine.peek("q", 10)] == [b"a"]
    for k in range(4):
        engine.append("q", [b"p%d" % k], [2], 1.0)
    assert engine.counts("q") == (5, 0, 9, 9)
    assert [r.data for r in engine.take("q", 10, 2.0, None)] == [b"a", b"p0", b"p1", b"p2",
                                                                  b"p3"]
    assert [r.data for r in engine.peek("other", 10)] == [b"o"]
    assert engine.counts("q") == (0, 0, 0, 0)
