"""The line of blocking takes of ``SyncQueue`` with a call nested in another of the same
thread (a signal handler's get while the thread waits in a get), and with the place of a
call that a signal handler's exception stopped as it left the line, on a thread that goes
on living."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from spoolq import Empty, SyncQueue

from .conftest import queue_path

_LIMIT = 20.0  # seconds; generous bounds on every wait of the test


class _Interrupted(BaseException):
    """Raised by a signal handler, as KeyboardInterrupt is."""


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_a_get_waiting_while_a_signal_handler_gets_from_the_queue_gets_its_item(
        tmp_path: Path, engine: str) -> None:
    with SyncQueue.create(queue_path(tmp_path, engine)) as q:
        nested: list[Any] = []
        handled = threading.Event()

        def handler(*_: Any) -> None:
            try:
                nested.append(q.get(timeout=0.2))
            except Empty as exc:
                nested.append(exc)
            handled.set()

        def put_once_handled() -> None:
            if handled.wait(_LIMIT):
                q.put("x")

        old = signal.signal(signal.SIGALRM, handler)
        putter = threading.Thread(target=put_once_handled, daemon=True)
        putter.start()
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            got = q.get(timeout=_LIMIT)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            putter.join(_LIMIT)
        assert len(nested) == 1 and isinstance(nested[0], Empty)
        assert got == "x"


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_a_place_left_as_its_call_left_the_line_holds_up_no_one(
        tmp_path: Path, engine: str) -> None:
    """The exception comes as the get starts to leave (simulated with a trace function,
    as the moment cannot be hit on purpose otherwise); its thread then lives on without
    another call of the queue."""
    def interrupt(frame: Any, event: str, _arg: Any) -> Any:
        if event == "call" and frame.f_code.co_name == "_leave_call":
            raise _Interrupted
        return None

    q = SyncQueue.create(queue_path(tmp_path, engine))
    left, release = threading.Event(), threading.Event()
    out: list[Any] = []

    def interrupted_then_idle() -> None:
        sys.settrace(interrupt)
        try:
            q.get(timeout=0.05)
        except BaseException as exc:
            out.append(exc)
        finally:
            sys.settrace(None)
        left.set()
        release.wait(_LIMIT)  # alive, and making no call of the queue

    idle = threading.Thread(target=interrupted_then_idle, daemon=True)
    idle.start()
    try:
        assert left.wait(_LIMIT)
        assert len(out) == 1 and isinstance(out[0], _Interrupted)
        served: list[Any] = []

        def wait() -> None:
            try:
                served.append(q.get(timeout=_LIMIT))
            except BaseException as exc:
                served.append(exc)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        deadline = time.monotonic() + _LIMIT
        while not any(p.thread is waiter for p in q._line):  # it has taken its place
            assert time.monotonic() < deadline
            time.sleep(0.01)
        q.put("a")
        waiter.join(_LIMIT / 2)
        assert served == ["a"]
    finally:
        release.set()
        idle.join(_LIMIT)
        started = time.monotonic()
        q.close()
        assert time.monotonic() - started < 5  # no call is counted as still running
