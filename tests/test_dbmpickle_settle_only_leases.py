"""An ack or a release settles leased records only: a record released back to the queue
(ready again, or delayed) is not acked or released by a call naming no owner, and the
queue's counts stay true, after reopening too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spoolq import open_engine
from spoolq.engines import Lease

from .conftest import queue_path


@pytest.mark.parametrize("engine", ["dbm", "pickle", "memory"])
@pytest.mark.parametrize("not_before", [0.0, 500.0])
def test_a_released_record_is_not_settled_by_a_call_naming_no_owner(
        tmp_path: Path, engine: str, not_before: float) -> None:
    path = queue_path(tmp_path, engine)
    eng = open_engine(path)
    try:
        eng.append("q", [b"one", b"two"], [3, 3], 1.0)
        (rec,) = eng.take("q", 1, 1.0, Lease("w", 100.0))
        assert eng.release("q", [(rec.id, 1)], "w", not_before=not_before,
                           max_attempts=None) == [rec.id]
        before = tuple(eng.counts("q"))
        nobody: Any = None  # not a str: it names no lease
        assert eng.ack("q", [(rec.id, 1)], nobody) == []
        assert eng.release("q", [(rec.id, 1)], nobody, not_before=0.0,
                           max_attempts=1) == []
        assert tuple(eng.counts("q")) == before == (2, 0, 6, 6)
        assert [r.data for r in eng.peek("q", 5)] == [b"one", b"two"]
        if engine != "memory":
            eng.close()
            eng = open_engine(path)
            assert tuple(eng.counts("q")) == before
            assert [r.data for r in eng.peek("q", 5)] == [b"one", b"two"]
    finally:
        eng.close()
