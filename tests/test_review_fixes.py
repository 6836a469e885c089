"""Regressions: maxsize under concurrent puts, join and dead letters, purge, calls after
close, argument checks, read-only opens and dead-letter ids."""

from __future__ import annotations

import threading

import pytest

import spoolq
from spoolq import SyncQueue


@pytest.mark.parametrize("many", [False, True])
def test_concurrent_puts_never_exceed_maxsize(path: str, many: bool) -> None:
    with SyncQueue.create(path, maxsize=3) as q:
        barrier = threading.Barrier(12)

        def put(i: int) -> None:
            barrier.wait()
            try:
                if many:
                    q.put_many([i], timeout=0.3)
                else:
                    q.put(i, timeout=0.3)
            except spoolq.Full:
                pass

        threads = [threading.Thread(target=put, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert q.qsize() == 3
        assert len(q.peek(100)) == 3


def test_put_nowait_succeeds_when_room_remains_during_concurrent_puts(path: str) -> None:
    with SyncQueue.create(path, maxsize=50) as q:
        barrier = threading.Barrier(8)
        fulls: list[int] = []

        def put(i: int) -> None:
            barrier.wait()
            for j in range(5):
                try:
                    q.put_nowait((i, j))
                except spoolq.Full:
                    fulls.append(i)

        threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert fulls == [] and q.qsize() == 40
