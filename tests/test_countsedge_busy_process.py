"""qsize() of a SyncQueue whose counts are read on another thread (LMDB here) hands the
read over without waiting for that thread: not even to start, which, in a process whose
other threads keep the interpreter busy, takes as long as they hold it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import spoolq

_POLL = 0.005


def _busy(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(2000):
            x += i


def test_qsize_never_waits_for_a_thread_to_start_while_others_run(tmp_path: Path) -> None:
    with spoolq.SyncQueue.create(str(tmp_path / "q.lmdb"), poll_interval=_POLL) as q:
        q.put_many(range(10))
        stop = threading.Event()
        burners = [threading.Thread(target=_busy, args=(stop,)) for _ in range(4)]
        for t in burners:
            t.start()
        took: list[float] = []
        try:
            until = time.monotonic() + 2.0
            while time.monotonic() < until:
                time.sleep(2 * _POLL)  # the counts are due at each call
                started = time.perf_counter()
                assert q.qsize() == 10
                took.append(time.perf_counter() - started)
        finally:
            stop.set()
            for t in burners:
                t.join()
        took.sort()
        # A call that only hands the read over takes microseconds; one that waits for a
        # new thread to take its first step waits for the busy threads to let it run.
        assert took[len(took) // 2] < 0.001, f"median {took[len(took) // 2] * 1e3:.1f} ms"

