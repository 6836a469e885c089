"""A take that finds puts pending for their group commit while another process holds the
SQLite file's write lock: the puts end up written or failed (their callers told), never
lost nor stored twice, and the counts add up once the lock is let go."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from spoolq import LockTimeout, Queue, SyncQueue
from spoolq.engines import Counts

from .sqlite_locks import file_counts

_HOLD = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


class _Holder:
    """Another process that holds the file's write lock until :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def _pending(q: Any, n: int) -> None:
    deadline = time.monotonic() + 10
    while q._core.group.pending() < n:
        assert time.monotonic() < deadline, "the puts never became pending"
        time.sleep(0.001)


def test_a_sync_get_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    """The merged transaction times out: every put's caller hears of it, none is
    stored, none hangs."""
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(str(path), engine_options={"timeout": 0.3}) as q:
        q.put("old")
        results: dict[int, BaseException | None] = {}

        def put(k: int) -> None:
            try:
                q.put(k)
                results[k] = None
            except BaseException as exc:
                results[k] = exc

        holder = _Holder(path)
        try:
            with q._core.lock:
                threads = [threading.Thread(target=put, args=(k,)) for k in range(3)]
                for t in threads:
                    t.start()
                _pending(q, 3)
                with pytest.raises(LockTimeout):
                    q.get()
            for t in threads:
                t.join(20)
                assert not t.is_alive()
        finally:
            holder.release()
        assert sorted(results) == [0, 1, 2]
        stored = [k for k, e in results.items() if e is None]
        assert all(isinstance(e, LockTimeout) for e in results.values() if e is not None)
        assert q._core.group.pending() == 0
        assert q.get_many(10, timeout=0.5) == ["old", *stored]
        assert q.qsize() == 0
        assert q.stats["puts"] == 1 + len(stored)
        assert q.stats["unfinished"] == 1 + len(stored)
    assert file_counts(path) == Counts(0, 0, 0, 0)


@pytest.mark.asyncio
async def test_an_async_get_on_the_loop_while_another_process_holds_the_lock(
        tmp_path: Path) -> None:
    """On the loop the merged take would wait: the puts stay pending and the get and the
    puts go to the worker, which writes them once the lock is let go."""
    path = tmp_path / "q.sqlite"
    async with await Queue.create(str(path), calls_on_loop=True,
                                  engine_options={"timeout": 5}) as q:
        await q.put("old")
        holder = await asyncio.to_thread(_Holder, path)
        try:
            get = asyncio.ensure_future(q.get())
            puts = asyncio.gather(*(q.put(k) for k in range(3)))
            await asyncio.sleep(0.3)
            assert not get.done() and not puts.done()
        finally:
            await asyncio.to_thread(holder.release)
        assert await asyncio.wait_for(get, 10) == "old"
        await asyncio.wait_for(puts, 10)
        assert await asyncio.wait_for(q.get_many(3), 5) == [0, 1, 2]
        assert q.qsize() == 0
        assert q.stats["puts"] == 4 and q.stats["gets"] == 4
    assert file_counts(path) == Counts(0, 0, 0, 0)


def test_a_lock_held_elsewhere_fails_the_puts_after_one_busy_timeout(tmp_path: Path) -> None:
    """The lock is no caller's fault: the merged write and take waits the busy timeout
    once, then every put's caller and the get hear of it; nothing waits it again to write
    the puts on their own, or apart."""
    path = tmp_path / "q.sqlite"
    timeout = 1.0
    with SyncQueue.create(str(path), engine_options={"timeout": timeout}) as q:
        q.put("old")
        ended: dict[int, float] = {}

        def put(k: int) -> None:
            with pytest.raises(LockTimeout):
                q.put(k)
            ended[k] = time.monotonic()

        holder = _Holder(path)
        try:
            with q._core.lock:
                threads = [threading.Thread(target=put, args=(k,)) for k in range(4)]
                for t in threads:
                    t.start()
                _pending(q, 4)
                started = time.monotonic()
                with pytest.raises(LockTimeout):
                    q.get()
                got_at = time.monotonic()
            for t in threads:
                t.join(20)
        finally:
            holder.release()
        assert sorted(ended) == [0, 1, 2, 3]
        assert got_at - started < 1.8 * timeout, got_at - started
        assert max(ended.values()) - started < 1.8 * timeout, max(ended.values()) - started
        assert q.get_many(10, timeout=0.5) == ["old"]
    assert file_counts(path) == Counts(0, 0, 0, 0)
