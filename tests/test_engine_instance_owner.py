"""An engine instance passed as ``engine=`` belongs to the queue opened on it, which
closes it with itself: a second queue opened on the same instance while the first is open
is refused, leaving the first as it was (two handles on one instance raced on the
engine's state and the first close closed the other's engine)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import spoolq
from spoolq.engines.memory import MemoryEngine
from spoolq.engines.sqlite import SQLiteEngine


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_second_queue_on_an_engine_instance_in_use_is_refused(tmp_path: Path,
                                                                kind: str) -> None:
    engine = MemoryEngine() if kind == "memory" else SQLiteEngine(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create("", engine=engine, name="a") as a:
        a.put(1)
        with pytest.raises(spoolq.ConfigurationError, match=r"engine instance.*'a'"):
            spoolq.SyncQueue.create("", engine=engine, name="b")

        async def other() -> None:
            with pytest.raises(spoolq.ConfigurationError, match="engine instance"):
                await spoolq.Queue.create("", engine=engine, name="a")

        asyncio.run(other())
        a.put(2)  # the refused opens left it open and whole
        assert [a.get(timeout=1), a.get(timeout=1)] == [1, 2]


def test_an_instance_whose_queue_closed_may_serve_another(tmp_path: Path) -> None:
    # The memory engine keeps its items across close(): reusing it after its queue
    # closed is allowed, one queue at a time.
    engine = MemoryEngine()
    with spoolq.SyncQueue.create("", engine=engine, name="a") as a:
        a.put("kept")
    with spoolq.SyncQueue.create("", engine=engine, name="a") as a:
        assert a.get(timeout=1) == "kept"
