"""Threads blocked in ``SyncQueue.get`` are served in the order they started waiting,
as ``queue.Queue`` serves them: the thread that has waited longest gets the next item."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from spoolq import SyncQueue

from .conftest import queue_path
from .threadstate import blocked

_WAITERS = 6
_LIMIT = 20.0  # seconds; generous bounds on every wait of the test


def _start_waiters(call: Any, n: int) -> tuple[list[threading.Thread], list[tuple[int, Any]]]:
    """Start ``n`` threads one after the other, each blocked in ``call()`` before the next
    starts; each appends (its number, what it got) when served."""
    served: list[tuple[int, Any]] = []
    threads = []
    for i in range(n):
        def run(i: int = i) -> None:
            try:
                served.append((i, call()))
            except BaseException as exc:
                served.append((i, exc))
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        deadline = time.monotonic() + _LIMIT
        while not blocked(thread):
            assert time.monotonic() < deadline, f"waiter {i} never blocked"
            time.sleep(0.002)
        threads.append(thread)
        time.sleep(0.06)  # past a poll interval: a later waiter's wait is not the same age
    return threads, served


def _serve_one_by_one(q: SyncQueue[Any], served: list[tuple[int, Any]], n: int) -> None:
    for k in range(n):
        q.put(k)
        deadline = time.monotonic() + _LIMIT
        while len(served) <= k:
            assert time.monotonic() < deadline, f"item {k} was never taken"
            time.sleep(0.002)


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_waiting_gets_are_served_in_the_order_they_started_waiting(
        tmp_path: Path, engine: str) -> None:
    with SyncQueue.create(queue_path(tmp_path, engine)) as q:
        threads, served = _start_waiters(lambda: q.get(timeout=_LIMIT), _WAITERS)
        _serve_one_by_one(q, served, _WAITERS)
        for t in threads:
            t.join(_LIMIT)
        assert served == [(i, i) for i in range(_WAITERS)]


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_waiting_leases_are_served_in_the_order_they_started_waiting(
        tmp_path: Path, engine: str) -> None:
    with SyncQueue.create(queue_path(tmp_path, engine)) as q:
        threads, served = _start_waiters(lambda: q.lease(timeout=_LIMIT).item, _WAITERS)
        _serve_one_by_one(q, served, _WAITERS)
        for t in threads:
            t.join(_LIMIT)
        assert served == [(i, i) for i in range(_WAITERS)]


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_a_get_arriving_later_does_not_take_the_item_a_waiting_get_is_owed(
        tmp_path: Path, engine: str) -> None:
    """A thread that puts and at once gets, over and over, while another thread waits:
    the waiting thread gets the first item, not none of them."""
    with SyncQueue.create(queue_path(tmp_path, engine)) as q:
        threads, served = _start_waiters(lambda: q.get(timeout=_LIMIT), 1)
        taken_here = []
        for k in range(50):
            q.put(k)
            try:
                taken_here.append(q.get(timeout=3))  # the waiter may be slow to run
            except Exception:
                break
        threads[0].join(_LIMIT)
        assert served == [(0, 0)]
        assert 0 not in taken_here


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_a_get_many_with_part_of_its_batch_waits_for_the_rest_behind_later_waiters(
        tmp_path: Path, engine: str) -> None:
    """As on ``Queue``: the part batch does not keep the head of the line."""
    with SyncQueue.create(queue_path(tmp_path, engine)) as q:
        calls = iter([lambda: q.get_many(3, timeout=_LIMIT), lambda: q.get(timeout=_LIMIT)])

        def call() -> Any:
            return next(calls)()  # the first thread's call, then the second's

        threads, served = _start_waiters(call, 2)
        q.put(0)
        deadline = time.monotonic() + _LIMIT
        while not blocked(threads[0]) or q.qsize():  # it holds item 0 and waits again
            assert time.monotonic() < deadline
            time.sleep(0.002)
        q.put(1)
        threads[1].join(_LIMIT)
        q.put_many([2, 3])
        threads[0].join(_LIMIT)
        assert sorted(served) == [(0, [0, 2, 3]), (1, 1)]
