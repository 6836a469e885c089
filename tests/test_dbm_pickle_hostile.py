"""The dbm and pickle engines used the way a careless or hostile user would: queues moved
into themselves, names of the wrong type, a damaged ``CURRENT``, and processes killed at
random moments of lease-heavy work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import spoolq
from spoolq import open_engine
from spoolq.engines import DBMEngine, Engine, Lease, MemoryEngine

from .conftest import queue_path

SINGLE_PROCESS = ["dbm", "pickle"]


def _generation(path: Path) -> str:
    return (path / "CURRENT").read_text().split()[1]


# ---- a queue moved into itself ------------------------------------------------------------

def _filled(eng: Engine) -> None:
    """Four records, the first of them leased and given back (held aside on dbm)."""
    eng.append("q", [b"a", b"b", b"c", b"d"], [1] * 4, 1.0)
    [rec] = eng.take("q", 1, 1.0, Lease("o", 10.0))
    eng.release("q", [(rec.id, rec.attempts)], "o", not_before=0.0, max_attempts=None)


@pytest.mark.parametrize("ids", [None, list(range(1, 100))], ids=["all", "by-id"])
@pytest.mark.parametrize("engine", SINGLE_PROCESS)
def test_a_queue_moved_into_itself_keeps_its_order_and_counts_each_record_once(
        tmp_path: Path, engine: str, ids: list[int] | None) -> None:
    oracle = MemoryEngine()
    _filled(oracle)
    eng = open_engine(queue_path(tmp_path, engine))
    try:
        _filled(eng)
        assert eng.move("q", "q", ids) == oracle.move("q", "q", ids) == 4
        assert [r.data for r in eng.peek("q", 10)] == [b"a", b"b", b"c", b"d"]
        assert eng.peek("q", 10) == oracle.peek("q", 10)
        assert eng.counts("q") == oracle.counts("q")
        assert eng.append("q", [b"e"], [1], 1.0) == oracle.append("q", [b"e"], [1], 1.0)
    finally:
        eng.close()


# ---- values the state cannot hold as given ------------------------------------------------

@pytest.mark.parametrize("engine", SINGLE_PROCESS)
def test_queue_names_and_lease_owners_of_another_type_are_refused(tmp_path: Path,
                                                                  engine: str) -> None:
    path = queue_path(tmp_path, engine)
    eng = open_engine(path)
    try:
        eng.append("q", [b"a", b"b"], [1, 1], 1.0)
        with pytest.raises(TypeError, match="queue name must be a str"):
            eng.append(7, [b"x"], [1], 1.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="queue name must be a str"):
            eng.append(None, [b"x"], [1], 1.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="queue name must be a str"):
            eng.move("q", 5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="lease owner must be a str"):
            eng.take("q", 1, 2.0, Lease(7, 10.0))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="raw size must be an int"):
            eng.append("q", [b"x", b"y"], [1, "2"], 1.0)  # type: ignore[list-item]
        with pytest.raises(TypeError, match="metadata key must be a str"):
            eng.set_meta(5, b"v")  # type: ignore[arg-type]
        [taken] = eng.take("q", 1, 2.0, None)
        with pytest.raises(TypeError, match="queue name must be a str"):
            eng.restore(None, [taken])  # type: ignore[arg-type]
        eng.restore("q", [taken])
        [leased] = eng.take("q", 1, 2.0, Lease("me", 10.0))
        with pytest.raises(TypeError, match="reason must be a str"):
            eng.release("q", [(leased.id, 1)], "me", not_before=0.0, max_attempts=1,
                        reason=b"why")  # type: ignore[arg-type]
        assert eng.counts("q") == (1, 1, 2, 2)
        assert eng.release("q", [(leased.id, 1)], "me", not_before=0.0,
                           max_attempts=None) == [leased.id]
        assert eng.queues() == ["q"]
        assert eng.counts("q") == (2, 0, 2, 2)
    finally:
        eng.close()
    eng = open_engine(path)
    try:
        assert eng.queues() == ["q"]
        assert [r.data for r in eng.peek("q", 5)] == [b"a", b"b"]
        assert eng.get_meta("5") is None
    finally:
        eng.close()


# ---- a damaged CURRENT --------------------------------------------------------------------

def test_dbm_current_naming_a_missing_generation_is_reported_and_no_file_removed(
        tmp_path: Path) -> None:
    path = tmp_path / "q.dbm"
    eng = DBMEngine(path)
    eng.append("q", [b"precious"], [8], 1.0)
    eng.close()
    live = _generation(path)
    before = sorted(os.listdir(path))
    (path / "CURRENT").write_text("spoolq-dbm gen-000009\n")
    for read_only in (False, True):
        with pytest.raises(spoolq.CorruptError, match="gen-000009"):
            DBMEngine(path, read_only=read_only)
        assert sorted(os.listdir(path)) == before
    # Once CURRENT names the generation again, every record is there.
    (path / "CURRENT").write_text(f"spoolq-dbm {live}\n")
    eng = DBMEngine(path)
    try:
        assert [r.data for r in eng.peek("q", 5)] == [b"precious"]
    finally:
        eng.close()
