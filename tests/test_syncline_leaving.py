"""Calls of ``SyncQueue`` that leave the line of waiting takes, however they leave it (an
exception raised inside the wait, a shutdown), do not hold up the calls behind them; and
on the remote engine, whose waits long-poll the server, waiting takes are served in the
order they started waiting too."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from spoolq import QueueShutDown, SyncQueue

from .conftest import queue_path
from .servers import ThreadedServer

_LIMIT = 20.0  # seconds; generous bounds on every wait of the test


class _Interrupted(BaseException):
    """Raised by a signal handler, as KeyboardInterrupt is."""


def _waiter(call: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _wait_for(condition: Any) -> None:
    deadline = time.monotonic() + _LIMIT
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.005)


def _in_line(q: SyncQueue[Any], n: int) -> None:
    """Wait until ``n`` calls of ``q`` hold places in its line of waiting takes: the
    order they started waiting in is then set, however slowly their threads run."""
    _wait_for(lambda: len(q._line) >= n)


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_a_get_interrupted_in_its_wait_does_not_keep_its_place_in_line(
        tmp_path: Path, engine: str) -> None:
    """Interrupted by a signal (Ctrl-C, say) while it waits: a thread that waits after it
    gets the next item, though it would wait forever behind a place left in the line."""
    old = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(_Interrupted()))
    try:
        with SyncQueue.create(queue_path(tmp_path, engine)) as q:
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(_Interrupted):
                q.get(timeout=_LIMIT)
            thread, out = _waiter(q.get)  # no timeout: it waits until served
            time.sleep(0.2)
            q.put("a")
            thread.join(_LIMIT)
            assert out == ["a"]
            q.put("b")
            started = time.monotonic()
            assert q.get(timeout=_LIMIT) == "b"
            assert time.monotonic() - started < _LIMIT / 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_a_shutdown_drains_the_queue_to_the_first_waiting_gets_then_stops_the_rest(
        tmp_path: Path, engine: str) -> None:
    with SyncQueue.create(queue_path(tmp_path, engine)) as q:
        waiters = []
        for k in range(3):
            waiters.append(_waiter(lambda: q.get(timeout=_LIMIT)))
            _in_line(q, k + 1)
        q.put_many(["a", "b"])
        _wait_for(lambda: sum(bool(out) for _t, out in waiters) == 2)
        q.shutdown()
        for thread, _out in waiters:
            thread.join(_LIMIT)
        assert sorted(out[0] for _t, out in waiters[:2]) == ["a", "b"]
        assert isinstance(waiters[2][1][0], QueueShutDown)


def test_waiting_takes_on_the_remote_engine_are_served_in_the_order_they_started(
        tmp_path: Path) -> None:
    """Every waiter long-polls the server; the one that waited longest is served first,
    a get_many with part of its batch after those that waited behind it."""
    with ThreadedServer(str(tmp_path / "q.sqlite")) as srv:
        url = srv.url + "/jobs"
        with SyncQueue.create(url) as consumer, SyncQueue.create(url) as producer:
            calls = [lambda: consumer.get(timeout=_LIMIT),
                     lambda: consumer.lease(timeout=_LIMIT).item,
                     lambda: consumer.get_many(2, timeout=_LIMIT),
                     lambda: consumer.get(timeout=_LIMIT)]
            waiters = []
            for k, call in enumerate(calls):
                waiters.append(_waiter(call))
                _in_line(consumer, k + 1)  # each has begun its wait before the next starts
            for k in range(5):
                producer.put(k)
                _wait_for(lambda: producer.peek(1) == [])  # taken, by the one it was for
            for thread, _out in waiters:
                thread.join(_LIMIT)
            assert [out for _t, out in waiters] == [[0], [1], [[2, 4]], [3]]


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_a_get_interrupted_as_it_joins_the_line_leaves_no_place_behind(
        tmp_path: Path, engine: str) -> None:
    """A signal handler's exception can come between any two steps of a call; here it
    comes as the get has just taken its place in the line (simulated with a trace
    function, as the moment cannot be hit on purpose otherwise). The next get still gets
    the next item, and the queue closes without waiting for a call that ended."""
    def interrupt(frame: Any, event: str, _arg: Any) -> Any:
        if event == "return" and frame.f_code.co_name == "_enter_call":
            raise _Interrupted
        return interrupt

    def traced_get() -> Any:
        sys.settrace(lambda *_: interrupt)
        try:
            return q.get()
        finally:
            sys.settrace(None)

    q = SyncQueue.create(queue_path(tmp_path, engine))
    try:
        thread, out = _waiter(traced_get)
        thread.join(_LIMIT)
        assert len(out) == 1 and isinstance(out[0], _Interrupted)
        thread, out = _waiter(q.get)  # no timeout: it waits until served
        time.sleep(0.2)
        q.put("a")
        thread.join(_LIMIT / 2)
        assert out == ["a"]
    finally:
        started = time.monotonic()
        q.close()
        assert time.monotonic() - started < 5
