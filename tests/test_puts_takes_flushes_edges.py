"""Puts, takes and flushes at their edges: group-commit tickets after failed writes,
the reap's count of dead letters, the put line of a bounded async queue, and takes of
every ready item."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import spoolq
from spoolq import Queue, SyncQueue
from spoolq.engines import Engine, open_engine
from spoolq.engines.base import STORED_RECORDS
from spoolq.protocol import MIN_MAX_REPLY

from .servers import ThreadedServer


class PartialAppend:
    """Delegates to a real engine, storing each record of an append in its own
    transaction; each append takes the next entry of ``script``: None stores every
    record, a number k stores the first k and then raises an EngineError that says how
    many were stored, as the remote engine's does when a later request fails."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.script: list[int | None] = []
        self.lock = threading.Lock()

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        with self.lock:
            limit = self.script.pop(0) if self.script else None
        ids: list[int] = []
        try:
            for record, size in zip(records, raw_sizes, strict=True):
                if limit is not None and len(ids) >= limit:
                    raise spoolq.EngineError("connection lost")
                ids += self._inner.append(queue, [record], [size], now)
        except spoolq.EngineError as exc:
            if ids:
                setattr(exc, STORED_RECORDS, len(ids))
            raise
        return ids

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# ---- group commit of the "buffer" durability -------------------------------------------


async def test_a_buffered_put_stored_by_a_flush_that_failed_later_returns(
        tmp_path: Path) -> None:
    # With "buffer", a flush that fails keeps what it did not store for the next one. A
    # put all of whose records that flush stored (before a later request failed) waited
    # on for the next flush, and when that failed too (at close) it raised, though its
    # item was in the queue: a caller that put it again stored it twice.
    path = str(tmp_path / "q.sqlite")
    engine = PartialAppend(open_engine(path))
    q = await Queue.create(path, engine=engine, durability="buffer", flush_items=1,
                           flush_interval=60)
    try:
        engine.script = [0]  # a's flush stores nothing
        a = asyncio.create_task(q.put("a"))
        while engine.script:
            await asyncio.sleep(0.001)
        await q._worker.submit(lambda: None)  # that flush is over: a waits for the next
        assert not a.done()
        engine.script = [1]  # the next one stores a, then fails
        b = asyncio.create_task(q.put("b"))
        while engine.script:
            await asyncio.sleep(0.001)
        await q._worker.submit(lambda: None)
        await asyncio.sleep(0.01)  # the loop runs what the flush settled
        assert a.done() and a.result() is None  # stored: it returns
        assert not b.done()
        engine.script = [0] * 10  # every later write fails
    finally:
        with contextlib.suppress(spoolq.EngineError):
            await q.aclose()
    results = await asyncio.gather(a, b, return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], spoolq.EngineError)
    with SyncQueue.create(path) as sq:
        assert sq.get_many(None, block=False) == ["a"]


# ---- the reap's count of dead letters -------------------------------------------------


def test_a_reap_counts_every_dead_letter_a_remote_reply_holds_in_parts(tmp_path: Path) -> None:
    # A reap reads the dead letters its expire added, to tell them from those other
    # handles add. A server returns fewer records than asked for when they do not fit
    # the client's max_reply: the dead letters past the first reply were not counted
    # finished, and join() never returned.
    with ThreadedServer(str(tmp_path / "served.sqlite")) as server, SyncQueue.create(
            f"{server.url}/jobs", engine_options={"max_reply": MIN_MAX_REPLY},
            max_attempts=1) as q:
        # Far more than one reply of 1024 bytes (random bytes: zstd cannot shrink them).
        q.put_many([os.urandom(400) for _ in range(6)])
        q.put("last")
        held: list[Any] = []
        while len(held) < 6:
            held += q.lease_many(6 - len(held), ttl=0.05)
        time.sleep(0.1)
        q._core._next_reap = 0.0  # the next take reaps
        assert q.get(block=False) == "last"
        q.task_done()
        assert q.stats["dead"] == 6 and q.stats["leased"] == 0
        assert q.stats["unfinished"] == 0  # join() returns
        assert q.stats["redelivered"] == 0
