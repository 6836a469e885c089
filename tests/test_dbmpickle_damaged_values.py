"""A pickle queue file holding values the engine never writes, of a type or size no record
has, is reported as damaged (CorruptError) and left as it is: neither a bare Python error
from reading it nor a queue handing such values out."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import spoolq

_GOOD = (1, b"x", 1, 0, 1.0, None, None, 0.0)


@pytest.mark.parametrize("record", [
    (1, b"x", 1, 0, 10**400, None, None, 0.0),
    (1, b"x", 1, 0, 1.0, None, "owner", 10**400),
    (1, b"x", 1, 0, 1.0, None, None, -(10**400)),
], ids=["enqueued-beyond-floats", "lease-end-beyond-floats", "visible-below-floats"])
def test_pickle_file_holding_values_no_record_has_is_damaged(tmp_path: Path,
                                                             record: tuple[object, ...]) -> None:
    path = tmp_path / "q.pickle"
    doc = {"meta": {"application": b"spoolq", "format_version": b"1"}, "next_id": 10,
           "queues": {"q": [record]}}
    path.write_bytes(pickle.dumps(doc, protocol=5))
    before = path.read_bytes()
    for read_only in (False, True):
        with pytest.raises(spoolq.CorruptError, match="damaged"):
            spoolq.open_engine(path, read_only=read_only)
    assert path.read_bytes() == before


def test_pickle_file_of_ints_where_floats_go_opens_with_plain_values(tmp_path: Path) -> None:
    """Times as ints, and a bool where an int goes (True is an int to Python), are read
    as the plain float or int they stand for."""
    path = tmp_path / "q.pickle"
    doc = {"meta": {"application": b"spoolq", "format_version": b"1"}, "next_id": 10,
           "queues": {"q": [(1, b"x", True, False, True, None, None, 0),
                            (2, b"y", 1, 1, 2, None, "owner", 5)]}}
    path.write_bytes(pickle.dumps(doc, protocol=5))
    eng = spoolq.open_engine(path)
    try:
        (ready,) = eng.peek("q", 5)
        assert ready == (1, b"x", 1, 0, 1.0, None)
        assert [type(v) for v in ready[2:5]] == [int, int, float]
        (leased,) = eng.peek_leased("q", 5)  # type: ignore[attr-defined]
        assert (leased.record.enqueued_at, leased.until) == (2.0, 5.0)
        assert [type(leased.record.enqueued_at), type(leased.until)] == [float, float]
    finally:
        eng.close()
