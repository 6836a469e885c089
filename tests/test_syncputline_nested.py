"""Calls of ``SyncQueue`` made while another call of the same thread waits in line (a
signal handler's put while the thread waits in put for room, its get while the thread
waits in get) do not wait for the call they interrupted, which goes on only once the
handler returns; calls in an ``atexit`` handler, where the main thread already reports
itself not alive, work as anywhere else; and entering a call costs no more with many
threads waiting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from spoolq import Empty, SyncQueue

from .conftest import queue_path

_LIMIT = 20.0  # seconds; generous bounds on every wait of the test
_HANDLER_TIMEOUT = 10.0  # the handler's call takes out of turn once this passes
_SLOW_POLL = 30.0  # a call in line is served by a wake-up, not by its poll


def _in_line(line: list[Any], n: int) -> None:
    deadline = time.monotonic() + _LIMIT
    while len(line) < n:
        assert time.monotonic() < deadline, "the calls never took their places"
        time.sleep(0.002)


def _with_alarm(handler: Any, call: Any) -> Any:
    """Run ``call`` in this (the main) thread with ``handler`` run by SIGALRM 0.2 s in."""
    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        return call()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_a_signal_handlers_put_gets_the_room_while_the_put_it_interrupted_waits(
        tmp_path: Path, engine: str) -> None:
    with SyncQueue.create(queue_path(tmp_path, engine), maxsize=1,
                          poll_interval=_SLOW_POLL) as q:
        q.put("a")  # full
        nested: list[Any] = []
        handled = threading.Event()

        def handler(*_: Any) -> None:
            started = time.monotonic()
            try:
                q.put("stop", timeout=_HANDLER_TIMEOUT)
                nested.append(time.monotonic() - started)
            except BaseException as exc:
                nested.append(exc)
            handled.set()

        got: list[Any] = []

        def consume() -> None:
            _in_line(q._put_line, 2)  # the handler's put waits behind the one it interrupted
            got.append(q.get(timeout=_LIMIT))
            if handled.wait(_LIMIT):
                got.append(q.get(timeout=_LIMIT))
                got.append(q.get(timeout=_LIMIT))

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        try:
            _with_alarm(handler, lambda: q.put("b", timeout=_LIMIT))
        finally:
            consumer.join(_LIMIT)
        assert len(nested) == 1 and isinstance(nested[0], float), nested
        assert nested[0] < _HANDLER_TIMEOUT / 2  # served by the room the consumer made
        assert got == ["a", "stop", "b"]


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_a_signal_handlers_get_gets_the_item_while_the_get_it_interrupted_waits(
        tmp_path: Path, engine: str) -> None:
    with SyncQueue.create(queue_path(tmp_path, engine), poll_interval=_SLOW_POLL) as q:
        nested: list[Any] = []
        handled = threading.Event()

        def handler(*_: Any) -> None:
            started = time.monotonic()
            try:
                nested.append((q.get(timeout=_HANDLER_TIMEOUT), time.monotonic() - started))
            except BaseException as exc:
                nested.append(exc)
            handled.set()

        def produce() -> None:
            _in_line(q._line, 2)  # the handler's get waits behind the one it interrupted
            q.put("x")
            if handled.wait(_LIMIT):
                q.put("y")

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        try:
            got = _with_alarm(handler, lambda: q.get(timeout=_LIMIT))
        finally:
            producer.join(_LIMIT)
        assert len(nested) == 1 and isinstance(nested[0], tuple), nested
        item, took = nested[0]
        assert item == "x" and took < _HANDLER_TIMEOUT / 2
        assert got == "y"


_ATEXIT = """
import atexit, sys, threading, time
from spoolq import SyncQueue

q = SyncQueue.create(sys.argv[1], maxsize=1, poll_interval=30.0)

def at_exit():
    q.put("job")
    m = q.lease(timeout=5)
    q.ack(m)
    print("leased", m.item)
    q.put("one")
    print("get_many", q.get_many(1, timeout=5))
    putter = threading.Thread(target=lambda: (time.sleep(0.2), q.put("later")))
    putter.start()
    print("get", q.get(timeout=5))
    putter.join()
    # The main thread waits in put for room; another thread then waits behind it, and
    # a third one's call frees the room: the main thread's put keeps its place in line.
    q.put("a")
    def second():
        while len(q._put_line) < 1:
            time.sleep(0.01)
        q.put("c", timeout=10)
    took = []
    def take_one():
        while len(q._put_line) < 2:
            time.sleep(0.01)
        took.append(q.get_many(1, timeout=5))
    threads = [threading.Thread(target=second), threading.Thread(target=take_one)]
    for t in threads:
        t.start()
    q.put("b", timeout=10)
    got = [q.get(timeout=5), q.get(timeout=5)]
    for t in threads:
        t.join()
    print("took", *took)  # printed here: a thread's print may interleave with another's
    print("then", *got)
    q.close()

atexit.register(at_exit)
"""


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_calls_in_an_atexit_handler(tmp_path: Path, engine: str) -> None:
    """Python runs atexit handlers after the main thread has ended as a thread: its
    ``is_alive()`` is False there, though it runs the calls."""
    script = tmp_path / "at_exit.py"
    script.write_text(textwrap.dedent(_ATEXIT))
    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, str(script), queue_path(tmp_path, engine)],
                          check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": src})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "leased job", "get_many ['one']", "get later", "took ['a']", "then b c"], \
        done.stdout + done.stderr


def _entry_cost(q: SyncQueue[Any], rounds: int) -> float:
    """Seconds per call of a get_nowait that finds nothing (it enters and leaves the
    count of calls), the best of several runs."""
    best = float("inf")
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(rounds):
            with pytest.raises(Empty):
                q.get_many(block=False)
        best = min(best, (time.perf_counter() - started) / rounds)
    return best


def test_a_call_costs_no_more_with_many_threads_waiting(tmp_path: Path) -> None:
    waiters = 300
    with SyncQueue.create(queue_path(tmp_path, "memory"), poll_interval=_SLOW_POLL) as q:
        alone = _entry_cost(q, 300)
        threads = [threading.Thread(target=lambda: q.get(timeout=_LIMIT), daemon=True)
                   for _ in range(waiters)]
        for t in threads:
            t.start()
        try:
            _in_line(q._line, waiters)
            crowded = _entry_cost(q, 300)
        finally:
            q.put_many(range(waiters))
            for t in threads:
                t.join(_LIMIT)
        assert crowded < 3 * alone, (alone, crowded)
