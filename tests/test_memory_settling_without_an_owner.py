"""An ack or release naming an owner that is not a str (None, bytes, a number) settles
nothing on the memory engine and on the pickle engine built on it, as on LMDB, SQLite and
dbm: no take stores such an owner, so it holds no lease. None matched every owner's
lease: the ack removed a record another owner held and then failed, leaving the counts
and the owners' tallies wrong; the release gave back another owner's leases."""

from __future__ import annotations

from pathlib import Path

import pytest

from spoolq.engines import Engine, Lease, MemoryEngine, open_engine


@pytest.fixture(params=["memory", "pickle"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    eng: Engine = MemoryEngine() if request.param == "memory" else \
        open_engine(str(tmp_path / "q.pickle"))
    request.addfinalizer(eng.close)
    return eng


@pytest.mark.parametrize("owner", [None, b"A", 5])
def test_an_owner_that_is_not_text_settles_nothing(engine: Engine, owner: object) -> None:
    engine.append("q", [b"a", b"b"], [1, 1], 0.0)
    first, second = engine.take("q", 2, 0.0, Lease("A", 10.0))
    assert engine.ack("q", [(first.id, 1)], owner) == []  # type: ignore[arg-type]
    assert engine.release("q", [(second.id, 1)], owner,  # type: ignore[arg-type]
                          not_before=0.0, max_attempts=None) == []
    assert engine.counts("q") == (0, 2, 2, 2)
    assert engine.owners("q") == {"A": 2}
    assert sorted(engine.ack("q", [(first.id, 1), (second.id, 1)], "A")) == [first.id,
                                                                             second.id]
    assert engine.counts("q") == (0, 0, 0, 0)
    assert engine.owners("q") == {}
