"""Settings, engines and the wire protocol against values users already pass: limits
given as "as large as an int goes", and what recent checks must still let through."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from spoolq import SyncQueue


@pytest.mark.parametrize("limit", [2**31 - 1, sys.maxsize])
@pytest.mark.parametrize("engine", ["sqlite", "memory"])
def test_max_attempts_as_large_as_an_int_goes_is_no_limit(tmp_path: Path, engine: str,
                                                          limit: int) -> None:
    # INT32_MAX and sys.maxsize are the usual ways to say "practically never"; every engine
    # took them, and no record ever reaches that many attempts.
    path = ":memory:" if engine == "memory" else str(tmp_path / "q.sqlite")
    with SyncQueue.create(path, engine=engine, max_attempts=limit) as q:
        q.put(1)
        for _ in range(3):
            q.nack(q.lease(timeout=5))
        assert q.get_nowait() == 1
        assert q.peek(dead=True) == []
