"""The reader threads that qsize() and stats hand the reads of the counts to: four for
the process, however many threads hand reads over at once, and a child forked while one
of them holds a handle's lock reads its counts on readers of its own."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import _freshcounts

_HANDLES = 16


def _readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("spoolq-counts-")]


def test_threads_reading_at_once_start_four_readers_at_most(tmp_path: Path) -> None:
    """Every handle hands its first read over at the same moment (LMDB is read on a
    reader thread): the process still keeps four readers, not one or more per caller."""
    before = len(_readers())
    queues = [spoolq.SyncQueue.create(str(tmp_path / f"q{k}.lmdb"), poll_interval=0.001)
              for k in range(_HANDLES)]
    try:
        for q in queues:
            q.put(1)
        time.sleep(0.01)  # every handle's counts are due
        start = threading.Barrier(_HANDLES)

        def size(q: spoolq.SyncQueue[Any]) -> None:
            start.wait()
            q.qsize()

        callers = [threading.Thread(target=size, args=(q,)) for q in queues]
        for t in callers:
            t.start()
        for t in callers:
            t.join(10)
        assert len(_readers()) <= max(before, _freshcounts._READERS)
        names = [t.name for t in _readers()]
        assert len(names) == len(set(names))
    finally:
        for q in queues:
            q.close()


def _hand_over(q: spoolq.SyncQueue[Any]) -> None:
    """A qsize() that hands the read to a reader: another thread holds the lock as it is
    called (a SQLite handle reads at once when the lock is free)."""
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with q._core.lock:
            held.set()
            done.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(5)
    try:
        time.sleep(0.02)  # the counts are due
        q.qsize()
    finally:
        done.set()
        t.join(5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_a_reader_holds_the_lock_reads_its_counts(
        tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with spoolq.SyncQueue.create(str(path), poll_interval=0.01) as q:
        q.put_many([1, 2])
        core = q._core
        parent = os.getpid()
        inside, release = threading.Event(), threading.Event()
        refresh = core._refresh_locked

        def slow_refresh(*args: Any, **kwargs: Any) -> Any:
            if os.getpid() == parent and threading.current_thread().name.startswith(
                    "spoolq-counts-"):
                inside.set()
                release.wait(10)
            return refresh(*args, **kwargs)

        core._refresh_locked = slow_refresh  # type: ignore[method-assign]
        _hand_over(q)  # to a reader, which holds the lock until released
        assert inside.wait(5)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                import traceback
                other = spoolq.SyncQueue.create(str(path))
                other.put(3)  # another handle: this one learns of it by its counts
                other.close()
                deadline = time.monotonic() + 5
                while core.counts.ready != 3 and time.monotonic() < deadline:
                    _hand_over(q)  # read on a reader of the child
                    time.sleep(0.05)
                code = 0 if core.counts.ready == 3 and q.get(timeout=2) == 1 else 2
            except BaseException:
                with open(tmp_path / "child.txt", "w") as out:
                    traceback.print_exc(file=out)
            finally:
                os._exit(code)
        try:
            deadline = time.monotonic() + 10
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    pytest.fail("the child hung")
                time.sleep(0.01)
            assert os.waitstatus_to_exitcode(status) == 0
        finally:
            release.set()
