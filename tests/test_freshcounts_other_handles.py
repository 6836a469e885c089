"""qsize(), empty(), full() and stats of a handle that only puts follow what other
processes (and other clients of the same server) take and lease: the counts are read
again once a poll interval has passed, without qsize() ever waiting for a lock."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq.errors import Unavailable

from .servers import SRC, ServerProcess

_POLL = 0.05
_WITHIN = 2.0  # seconds: many poll intervals, for a loaded machine

_CONSUMER = """
import sys, spoolq
path, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = spoolq.SyncQueue.create(path, poll_interval=0.05)
if mode == "take":
    got = q.get_many(n, timeout=10)
    print(len(got), flush=True)
    q.close()
else:
    msgs = q.lease_many(n, timeout=10, ttl=300)
    print(len(msgs), flush=True)
    sys.stdin.read()  # keeps its leases until the test closes the pipe
    q.close()
"""


def _child(path: str, mode: str, n: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", _CONSUMER, path, mode, str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def _take_all_elsewhere(path: str, n: int) -> None:
    """Take ``n`` items in another process, which has exited when this returns."""
    proc = _child(path, "take", n)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.split() == [str(n)]


def _reaches(value: Callable[[], Any], wanted: Any, within: float = _WITHIN,
             pause: float = 0.01) -> float:
    """Call ``value()`` until it returns ``wanted``; return how long that took. Each call
    must return at once: none may wait for a lock or the engine."""
    started = time.monotonic()
    while True:
        before = time.monotonic()
        got = value()
        assert time.monotonic() - before < 0.2, "a size call blocked"
        if got == wanted:
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"still {got!r}, not {wanted!r}"
        time.sleep(pause)


@pytest.fixture
def sqlite_path(tmp_path: Path) -> str:
    return str(tmp_path / "q.sqlite")


def test_sync_qsize_follows_another_process_taking_everything(sqlite_path: str) -> None:
    with spoolq.SyncQueue.create(sqlite_path, poll_interval=_POLL, maxsize=10) as q:
        q.put_many(range(10))
        assert q.qsize() == 10 and q.full()
        _take_all_elsewhere(sqlite_path, 10)
        _reaches(q.qsize, 0)
        assert q.empty() and not q.full()
        assert q.stats["count"] == 0
        assert q.stats["compressed_size_bytes"] == 0


def test_sync_first_size_after_a_pause_is_fresh_on_sqlite(sqlite_path: str) -> None:
    """On a local file the read is made within qsize() itself (it waits for no lock):
    the first call after a pause already answers with the counts of the file."""
    with spoolq.SyncQueue.create(sqlite_path, poll_interval=_POLL) as q:
        q.put_many(range(5))
        assert q.qsize() == 5
        _take_all_elsewhere(sqlite_path, 5)
        time.sleep(2 * _POLL)
        assert q.qsize() == 0


def test_sync_stats_show_leases_of_another_process(sqlite_path: str) -> None:
    with spoolq.SyncQueue.create(sqlite_path, poll_interval=_POLL) as q:
        q.put_many(range(10))
        proc = _child(sqlite_path, "lease", 3)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "3"
            _reaches(lambda: (q.stats["leased"], q.stats["count"]), (3, 7))
            assert q.qsize() == 7
        finally:
            proc.communicate(timeout=30)
        assert proc.returncode == 0
        _reaches(lambda: (q.stats["leased"], q.qsize()), (0, 10))


def test_sync_qsize_follows_another_client_of_the_server(tmp_path: Path) -> None:
    with ServerProcess(str(tmp_path / "q.sqlite")) as server:
        url = f"{server.url}/jobs"
        with spoolq.SyncQueue.create(url, poll_interval=_POLL) as producer, \
                spoolq.SyncQueue.create(url, poll_interval=_POLL) as consumer:
            producer.put_many(range(10))
            assert producer.qsize() == 10
            assert consumer.get_many(10, timeout=10) == list(range(10))
            _reaches(producer.qsize, 0)
            assert producer.empty()
            assert producer.stats["count"] == 0
            # Puts of the other client are seen too.
            consumer.put_many(range(4))
            _reaches(producer.qsize, 4)


def test_async_qsize_follows_another_process_taking_everything(sqlite_path: str) -> None:
    async def main() -> None:
        q = await spoolq.Queue.create(sqlite_path, poll_interval=_POLL)
        try:
            await q.put_many(range(10))
            assert q.qsize() == 10
            await asyncio.to_thread(_take_all_elsewhere, sqlite_path, 10)
            deadline = time.monotonic() + _WITHIN
            while q.qsize() != 0:
                assert time.monotonic() < deadline, f"qsize() still {q.qsize()}"
                await asyncio.sleep(0.01)
            assert q.empty() and q.stats["count"] == 0
        finally:
            await q.aclose()

    asyncio.run(main())


def test_async_stats_show_leases_of_another_client(tmp_path: Path) -> None:
    async def main(url: str) -> None:
        q = await spoolq.Queue.create(url, poll_interval=_POLL)
        other = spoolq.SyncQueue.create(url, poll_interval=_POLL)
        try:
            for i in range(6):
                await q.put(i)
            msgs = await asyncio.to_thread(other.lease_many, 2, timeout=10, ttl=300)
            assert len(msgs) == 2
            deadline = time.monotonic() + _WITHIN
            while (q.stats["leased"], q.qsize()) != (2, 4):
                assert time.monotonic() < deadline, f"stats still {q.stats}"
                await asyncio.sleep(0.01)
        finally:
            other.close()
            await q.aclose()

    with ServerProcess(str(tmp_path / "q.sqlite")) as server:
        asyncio.run(main(f"{server.url}/jobs"))


def _write_lock(path: str) -> Callable[[], None]:
    """Another process takes the file's write lock; the returned call lets it go."""
    script = ("import sqlite3, sys\n"
              "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "c.execute('BEGIN IMMEDIATE')\n"
              "print('locked', flush=True)\n"
              "sys.stdin.read()\n"
              "c.execute('ROLLBACK')\n")
    proc = subprocess.Popen([sys.executable, "-c", script, path], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"

    def release() -> None:
        if proc.poll() is None:
            proc.communicate(timeout=30)

    return release


def test_sync_qsize_never_waits_while_a_put_of_the_handle_waits_for_the_file(
        sqlite_path: str) -> None:
    """A put of another thread holds the handle's lock while it waits for another
    process's write lock: qsize() answers at once all along, and is fresh after."""
    q = spoolq.SyncQueue.create(sqlite_path, poll_interval=_POLL,
                                engine_options={"timeout": 20.0})
    write_unlocked = _write_lock(sqlite_path)
    try:
        done = threading.Event()

        def put() -> None:
            q.put("x")
            done.set()

        t = threading.Thread(target=put)
        t.start()
        time.sleep(0.2)  # the put waits for the lock, holding the handle's
        assert not done.is_set()
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            _reaches(q.qsize, 0, within=0.0)
            _reaches(lambda: q.stats["leased"], 0, within=0.0)
            time.sleep(0.01)
        write_unlocked()
        t.join(30)
        assert done.is_set()
        _reaches(q.qsize, 1)
    finally:
        write_unlocked()
        q.close()


def test_sync_qsize_never_waits_for_a_stalled_server(tmp_path: Path) -> None:
    with ServerProcess(str(tmp_path / "q.sqlite")) as server:
        url = f"{server.url}/jobs"
        q = spoolq.SyncQueue.create(url, poll_interval=_POLL,
                                    engine_options={"timeout": 3.0})
        try:
            q.put_many(range(3))
            outcome: list[Any] = []

            def get() -> None:
                try:
                    outcome.append(q.get())
                except Unavailable as exc:
                    outcome.append(exc)

            with server.stalled():
                t = threading.Thread(target=get)
                t.start()  # its take waits for the server, holding the handle's lock
                until = time.monotonic() + 1.0
                while time.monotonic() < until:
                    _reaches(q.qsize, q.qsize(), within=0.0)
                    q.stats  # noqa: B018 - must not block either
                    time.sleep(0.01)
            t.join(30)
            assert outcome
        finally:
            q.close()


def test_qsize_reads_nothing_while_the_counts_are_fresh(sqlite_path: str) -> None:
    """Within a poll interval qsize() reads only the clock: another process's take shows
    only after it."""
    with spoolq.SyncQueue.create(sqlite_path, poll_interval=30.0) as q:
        q.put_many(range(3))
        _take_all_elsewhere(sqlite_path, 3)
        assert q.qsize() == 3
