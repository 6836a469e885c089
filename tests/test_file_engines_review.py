"""The single-process file engines (dbm, pickle) under kills, foreign files and odd paths."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import spoolq
from spoolq import SyncQueue, open_engine
from spoolq.engines import DBMEngine

from .conftest import queue_path


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          check=False, capture_output=True, text=True, timeout=60)


def _generation(path: Path) -> str:
    return (path / "CURRENT").read_text().split()[1]


# ---- dbm ----------------------------------------------------------------------------------


def test_dbm_generation_left_by_a_kill_during_compaction_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "q.dbm"
    # Killed right after CURRENT names the new generation, before the old one is removed.
    out = _run("""
        import os, sys
        import spoolq.engines.dbm as engine
        eng = engine.DBMEngine(sys.argv[1])
        eng.append("keep", [b"kept"], [4], 1.0)
        switch = engine.files.set_current
        def switch_then_die(*args):
            switch(*args)
            os._exit(9)
        engine.files.set_current = switch_then_die
        for _ in range(10):
            eng.append("churn", [b"x"] * 300, [1] * 300, 1.0)
            eng.take("churn", 300, 1.0, None)
    """, str(path))
    assert out.returncode == 9, out.stderr
    assert any(name.startswith("gen-000001") for name in os.listdir(path))
    # and a half-written generation from a compaction killed before it was named
    (path / "gen-000007.dat").write_bytes(b"half")
    (path / "CURRENT.tmp").write_text("spoolq-dbm gen-000007\n")
    eng = DBMEngine(path)
    try:
        assert [r.data for r in eng.peek("keep", 5)] == [b"kept"]
    finally:
        eng.close()
    live = _generation(path)
    assert all(name == "CURRENT" or name.startswith(live + ".") for name in os.listdir(path))


def test_dbm_path_of_another_programs_dbm_database_is_refused(tmp_path: Path) -> None:
    import dbm.dumb

    path = tmp_path / "cache.dbm"
    with dbm.dumb.open(str(path), "c") as db:  # makes cache.dbm.dat and cache.dbm.dir
        db[b"user"] = b"their data"
    before = sorted(os.listdir(tmp_path))
    for read_only in (False, True):
        with pytest.raises(spoolq.FormatError, match="another program"):
            open_engine(path, read_only=read_only)
    assert not path.exists()
    with dbm.dumb.open(str(path), "r") as db:
        assert db[b"user"] == b"their data"
    assert sorted(os.listdir(tmp_path)) in (before, sorted([*before, "cache.dbm.lock"]))


# ---- both ---------------------------------------------------------------------------------

SINGLE_PROCESS = ["dbm", "pickle"]


@pytest.mark.parametrize("engine", SINGLE_PROCESS)
def test_a_second_process_opening_through_a_symlink_is_refused(tmp_path: Path,
                                                               engine: str) -> None:
    real = queue_path(tmp_path, engine)
    link = str(tmp_path / f"link.{engine}")
    eng = open_engine(real)
    try:
        eng.append("q", [b"mine"], [4], 1.0)
        os.symlink(real, link)
        out = _run("""
            import sys, spoolq
            try:
                spoolq.open_engine(sys.argv[1]).close()
            except spoolq.LockTimeout:
                print("refused")
        """, link)
        assert out.stdout.strip() == "refused", out.stderr
    finally:
        eng.close()


def test_pickle_written_through_a_symlink_stays_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.pickle"
    link = tmp_path / "link.pickle"
    with SyncQueue.create(real) as q:
        q.put("first")
    link.symlink_to(real)
    with SyncQueue.create(link) as q:
        q.put("second")
    assert link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.pickle", "real.pickle",
                                                           "real.pickle.lock"]
    with SyncQueue.create(real) as q:
        assert q.get_many(None) == ["first", "second"]


def test_dbm_read_only_handle_reads_on_after_its_writer_compacted(tmp_path: Path) -> None:
    path = tmp_path / "q.dbm"
    eng = DBMEngine(path)
    eng.append("q", [b"a", b"b"], [1, 1], 1.0)
    eng.close()
    reader = open_engine(path, read_only=True)
    try:
        assert [r.data for r in reader.peek("q", 5)] == [b"a", b"b"]
        out = _run("""
            import sys
            from spoolq.engines import DBMEngine
            eng = DBMEngine(sys.argv[1])
            eng.take("q", 1, 1.0, None)
            for _ in range(5):
                eng.append("churn", [b"x"] * 300, [1] * 300, 1.0)
                eng.take("churn", 300, 1.0, None)
            eng.close()
        """, str(path))
        assert out.returncode == 0, out.stderr
        assert _generation(path) != "gen-000001"
        assert [r.data for r in reader.peek("q", 5)] == [b"b"]
        assert reader.peek_leased("q", 5) == []
        assert reader.counts("q").ready == 1
    finally:
        reader.close()


def test_pickle_open_leaves_other_files_named_like_the_queue_alone(tmp_path: Path) -> None:
    path = tmp_path / "q.pickle"
    SyncQueue.create(path).close()
    mine = [tmp_path / "q.pickle.backup.tmp", tmp_path / "q.pickle.2024-05-01.tmp"]
    for other in mine:
        other.write_bytes(b"the user's own file")
    with SyncQueue.create(path) as q:
        q.put(1)
    assert all(other.read_bytes() == b"the user's own file" for other in mine)
