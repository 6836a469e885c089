"""The dbm and pickle engines used the way a careless or hostile user would: queues moved
into themselves, names of the wrong type, a damaged ``CURRENT``, and processes killed at
random moments of lease-heavy work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import spoolq
from spoolq.engines import DBMEngine

SINGLE_PROCESS = ["dbm", "pickle"]


def _generation(path: Path) -> str:
    return (path / "CURRENT").read_text().split()[1]


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
