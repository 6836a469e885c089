"""The dead letters of one release come in id order on every local engine, also when the
deliveries mix in ones of other types (skipped: they hold no lease), which could not be
sorted together with the others."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolq.engines import Engine, Lease, open_engine

NOW = 1_000_000.0


@pytest.fixture(params=["memory", "sqlite", "lmdb", "dbm", "pickle"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    eng = open_engine(tmp_path / f"q.{request.param}", request.param)
    try:
        yield eng
    finally:
        eng.close()


def test_a_release_of_odd_and_reversed_deliveries_buries_in_id_order(engine: Engine) -> None:
    ids = engine.append("q", [b"a", b"b", b"c"], [1, 1, 1], NOW)
    taken = engine.take("q", 3, NOW, Lease("me", NOW + 30))
    assert [r.id for r in taken] == ids
    a, b, c = ids
    deliveries: list[tuple[object, object]] = [
        (c, 1), ("x", 1), (None, None), (float(b), 1), (b, 1.0), (b, 1), (str(a), 1),
        (a, 1), (c, 1)]
    released = engine.release("q", deliveries, "me",  # type: ignore[arg-type]
                              not_before=0.0, max_attempts=1, reason="r")
    assert sorted(released) == ids
    dead = engine.peek("q.dead", 10)
    assert [r.data for r in dead] == [b"a", b"b", b"c"]
    assert [r.id for r in dead] == sorted(r.id for r in dead)
    assert engine.counts("q")[:2] == (0, 0)
    assert engine.counts("q.dead").ready == 3
