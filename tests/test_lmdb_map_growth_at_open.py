"""Opening an LMDB queue file while another process grows its map: the open adopts the
larger map and goes on. It failed with 'MDB_MAP_RESIZED: Database contents grew beyond
environment mapsize' (seen by `spoolq verify` and readers of a live file)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import pytest

from spoolq.engines import LMDBEngine
from spoolq.engines import _lmdbopen as opening

ROOT = Path(__file__).resolve().parent.parent


def _grow_in_another_process(path: Path) -> None:
    script = textwrap.dedent(f"""
        from spoolq.engines import LMDBEngine
        eng = LMDBEngine({str(path)!r}, map_size=65536)
        for _ in range(8):
            eng.append("q", [b"x" * 65536] * 4, [65536] * 4, 1.0)
        eng.close()
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60,
                   env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("read_only", [True, False])
def test_a_map_grown_by_another_process_after_the_environment_opened_is_adopted(
        tmp_path: Path, read_only: bool) -> None:
    path = tmp_path / "q.lmdb"
    eng = LMDBEngine(path, map_size=65536)
    eng.append("q", [b"a"], [1], 1.0)
    eng.close()
    env = opening.open_environment(str(path), read_only=read_only, sync=True,
                                   metasync=False, map_size=65536, max_readers=126)
    try:
        _grow_in_another_process(path)  # the map doubles several times past 64 KiB
        with pytest.raises(lmdb.MapResizedError):  # what LMDB says to a read now
            env.begin().abort()
        layout = opening.open_layout(env, str(path), read_only, lambda what, body: (-1, -1))
        with env.begin() as txn:
            assert txn.stat(layout.ready)["entries"] == 33
    finally:
        env.close()
    reader = LMDBEngine(path, read_only=True)
    try:
        assert reader.counts("q").ready == 33
    finally:
        reader.close()
