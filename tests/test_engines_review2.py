"""SQLite, LMDB and memory engines: small maps, processes sharing a file, and the memory
engine answering as the disk engines do."""

from __future__ import annotations

from pathlib import Path

import pytest

from spoolq.engines import LMDBEngine


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
