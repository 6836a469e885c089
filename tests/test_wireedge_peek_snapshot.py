"""A peek over the wire shows the queue as it was at one moment, though the server reads
a large peek in several parts: another process writing the same SQLite file between two of
those reads must not make a record show twice or go missing. A real SQLite file, a real
server on 127.0.0.1 and a second engine on the file doing what another process would."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import spoolq
from spoolq.engines import Lease, open_engine
from spoolq.engines.sqlite import SQLiteEngine

from .servers import ThreadedServer


class _Interleaved(SQLiteEngine):
    """The server's engine: ``between`` runs after its first peek of a request, as another
    process's write would land between two reads."""

    between: Any = None

    def peek(self, queue: str, n: int, offset: int = 0) -> list[Any]:
        got = super().peek(queue, n, offset)
        hook, type(self).between = type(self).between, None
        if hook is not None:
            hook()
        return got


def _setup(path: Path) -> tuple[Any, Any]:
    """Record 1 leased by another process, then 40 small ready records, then a large one
    that makes the queue's average record large: the server reads a peek of ten in parts."""
    other = open_engine(str(path))  # another process on the same file
    q = spoolq.SyncQueue.create(str(path), name="jobs", compressor=None)
    q.put("held")
    q.put_many([f"item {i}" for i in range(40)])
    q.put(os.urandom(200_000))
    q.close()
    (held,) = other.take("jobs", 1, time.time(), Lease("elsewhere", time.time() + 600))
    return other, held


def _peek_ten(path: Path, between: Any) -> list[Any]:
    """Ten items peeked through a server on ``path``, ``between`` run after its first read."""
    with ThreadedServer(str(path), engine=_Interleaved(str(path))) as srv:
        url = f"{srv.url}/jobs"
        with spoolq.SyncQueue.create(url, compressor=None,
                                     engine_options={"max_reply": 1024}) as q:
            _Interleaved.between = between
            return q.peek(10)


def test_a_peek_sees_no_record_twice_when_another_process_releases_one(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    other, held = _setup(path)
    seen = _peek_ten(path, lambda: other.release(  # it comes back, ahead of the others
        "jobs", [(held.id, held.attempts)], "elsewhere", not_before=0.0, max_attempts=None,
        count_attempt=False))
    other.close()
    assert len(seen) == len(set(map(repr, seen))), seen
    # one moment's view: the first ten of the others, or the held record and nine of them
    assert seen in ([f"item {i}" for i in range(10)],
                    ["held"] + [f"item {i}" for i in range(9)]), seen


def test_a_peek_skips_no_record_when_another_process_takes_one(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    other, _ = _setup(path)
    seen = _peek_ten(path, lambda: other.take("jobs", 1, time.time(), None))
    other.close()
    numbers = [int(s.split()[1]) for s in seen]
    # every record between the first and the last shown was in the queue throughout
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), seen
    assert len(numbers) == 10
