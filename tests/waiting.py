"""Helpers for tests of calls that block: a getter in a thread, a long-poll to cancel."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def getter_thread(q: Any, timeout: float) -> tuple[threading.Thread, list[BaseException]]:
    """Start a thread blocked in ``q.get(timeout=...)``; the list collects what it raised."""
    errors: list[BaseException] = []

    def get() -> None:
        try:
            q.get(timeout=timeout)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=get)
    thread.start()
    return thread, errors


def assert_cancel_ends_a_wait(engine: Any, queue: str, within: float) -> None:
    """``engine.cancel_waits()`` ends a ``wait_ready`` in another thread within ``within``
    seconds, and a later append still wakes the next wait."""
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(engine.wait_ready(queue, 30)))
    waiter.start()
    time.sleep(0.3)  # long enough to be listening
    start = time.monotonic()
    engine.cancel_waits()
    waiter.join(5)
    assert result == [False] and time.monotonic() - start < within
    engine.append(queue, [b"x"], [1], 1.0)
    assert engine.wait_ready(queue, 5) is True, "a wait after the cancel must still hear"


def assert_one_wait_is_cancelled_alone(engine: Any, queue: str, within: float) -> None:
    """A ``WaitCancel`` ends its own ``wait_ready`` within ``within`` seconds and leaves
    another thread's wait going; one cancelled before the wait makes it return at once."""
    from spoolq.engines import WaitCancel

    mine, other = WaitCancel(), WaitCancel()
    results: dict[str, Any] = {}

    def wait(name: str, cancel: WaitCancel) -> None:
        results[name] = engine.wait_ready(queue, 30, cancel)
        results[name + " at"] = time.monotonic()

    threads = [threading.Thread(target=wait, args=("mine", mine)),
               threading.Thread(target=wait, args=("other", other))]
    for t in threads:
        t.start()
    time.sleep(0.3)  # long enough to be listening
    start = time.monotonic()
    mine.cancel()
    threads[0].join(5)
    assert results.get("mine") is False and results["mine at"] - start < within
    assert threads[1].is_alive(), "the other wait must go on"
    other.cancel()
    threads[1].join(5)
    assert results.get("other") is False
    done = WaitCancel()
    done.cancel()
    start = time.monotonic()
    assert engine.wait_ready(queue, 30, done) is False and time.monotonic() - start < within


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``call`` in a thread; the list gets what it returned or raised."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out
