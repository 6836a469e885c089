"""A signal handler's exception (KeyboardInterrupt, say) that lands as a call of
``SyncQueue`` leaves its count of calls in progress leaves nothing counted: close() does
not wait for a call that has ended."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spoolq import SyncQueue

from .conftest import queue_path

_LIMIT = 20.0  # seconds; generous bounds on every wait of the test


class _Interrupted(BaseException):
    """Raised by a signal handler, as KeyboardInterrupt is."""


def _interrupt_as_it_leaves(q: SyncQueue[Any], call: Callable[[], Any]) -> None:
    """Run ``call`` in this (the main) thread; as it starts to leave its count of calls,
    another thread holds the queue's lock and SIGALRM comes while the call waits for it:
    the handler's exception ends the call there. The trace function only picks the
    moment, which cannot be hit on purpose otherwise; the signal is real."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with q._cond:
            holding.set()
            release.wait(_LIMIT)

    holder = threading.Thread(target=hold, daemon=True)

    def trace(frame: Any, event: str, _arg: Any) -> None:
        if event == "call" and frame.f_code.co_name == "_leave_call" \
                and not holder.is_alive() and not holding.is_set():
            sys.settrace(None)
            holder.start()
            holding.wait(_LIMIT)
            signal.setitimer(signal.ITIMER_REAL, 0.05)

    def handler(*_: Any) -> None:
        raise _Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    sys.settrace(trace)
    try:
        with pytest.raises(_Interrupted):
            call()
    finally:
        sys.settrace(None)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        release.set()
        if holder.is_alive():
            holder.join(_LIMIT)
    assert holding.is_set(), "the call never reached the point where it leaves"


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
@pytest.mark.parametrize("call", ["put_nowait", "put", "get_nowait", "get"])
def test_close_does_not_wait_for_a_call_interrupted_as_it_left(
        tmp_path: Path, engine: str, call: str) -> None:
    q = SyncQueue.create(queue_path(tmp_path, engine), maxsize=5)
    try:
        calls: dict[str, Callable[[], Any]] = {
            "put_nowait": lambda: q.put_nowait("a"),
            "put": lambda: q.put("a", timeout=_LIMIT),
            "get_nowait": q.get_nowait,  # the queue is empty: Empty, then the exception
            "get": lambda: q.get(timeout=0.05),
        }
        _interrupt_as_it_leaves(q, calls[call])
        if call.startswith("put"):
            assert q.get(timeout=_LIMIT) == "a"  # stored before the call was interrupted
    finally:
        started = time.monotonic()
        q.close()
        assert time.monotonic() - started < 5  # no call is counted as still running
