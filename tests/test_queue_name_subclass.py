"""A queue name given as a str subclass (a str Enum, say) is the queue of its text: the
same queue, and the same dead letters, as the plain name, on every engine."""

from __future__ import annotations

import asyncio
import enum
import threading
from pathlib import Path

import pytest

import spoolq

from .conftest import queue_path


class Name(str, enum.Enum):
    JOBS = "jobs"


@pytest.mark.parametrize("engine", ["sqlite", "lmdb", "dbm", "pickle"])
def test_a_str_enum_name_is_the_queue_of_its_text(tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path, engine)
    with spoolq.SyncQueue.create(path, name=Name.JOBS, max_attempts=1) as q:
        q.put("a")
        q.put("b")
        msg = q.lease(timeout=5)
        q.nack(msg)  # its last attempt: to the dead letters
    with spoolq.SyncQueue.create(path, name="jobs") as plain:
        assert plain.peek(5) == ["b"]
        assert plain.peek(5, dead=True) == ["a"]
        assert plain.stats["dead"] == 1
    with spoolq.SyncQueue.create(path, name=Name.JOBS) as again:
        assert again.peek(5, dead=True) == ["a"]
        assert again.requeue_dead() == 1
        assert again.get_many(5, timeout=5) == ["b", "a"]


def test_the_async_queue_s_thread_is_named_for_the_text(tmp_path: Path) -> None:
    # Its engine thread appears in logs as %(threadName)s: "spoolq-jobs", as for the
    # plain name, not "spoolq-Name.JOBS".
    async def main() -> list[str]:
        async with await spoolq.Queue.create(str(tmp_path / "q.sqlite"), name=Name.JOBS):
            return [t.name for t in threading.enumerate() if t.name.startswith("spoolq-")
                    and not t.name.startswith("spoolq-wait")]

    names = asyncio.run(main())  # (other tests' threads may be running: pools, servers)
    assert "spoolq-jobs" in names and not any("Name.JOBS" in name for name in names), names
