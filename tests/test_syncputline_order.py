"""Puts of ``SyncQueue`` that wait for room (a queue with ``maxsize``) take it in the order
they started waiting, as waiting gets take items: a thread that frees room and fills it
again at once, over and over, does not starve a put that waits; ``put_nowait`` and a put
past its timeout may still take room out of turn."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from spoolq import Full, SyncQueue

from .conftest import queue_path
from .threadstate import blocked

_LIMIT = 20.0  # seconds; generous bounds on every wait of the test
_ROUNDS = 200


def _start(call: Any) -> tuple[threading.Thread, list[Any], threading.Event]:
    """Run ``call`` in a thread; its result (or exception) goes to the list, then the
    event is set."""
    out: list[Any] = []
    ended = threading.Event()

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:
            out.append(exc)
        finally:
            ended.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out, ended


def _wait_blocked(thread: threading.Thread) -> None:
    deadline = time.monotonic() + _LIMIT
    while not blocked(thread):
        assert time.monotonic() < deadline, "the thread never blocked"
        time.sleep(0.002)


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_a_waiting_put_is_not_starved_by_a_thread_that_gets_and_puts_in_a_loop(
        tmp_path: Path, engine: str) -> None:
    with SyncQueue.create(queue_path(tmp_path, engine), maxsize=1) as q:
        q.put("first")
        waiter, waiter_out, waiter_ended = _start(lambda: q.put("w", timeout=_LIMIT))
        _wait_blocked(waiter)
        looped: list[Any] = []

        def loop() -> None:
            for k in range(_ROUNDS):
                looped.append(q.get(timeout=_LIMIT))
                if looped[-1] == "w":
                    return
                q.put(k, timeout=_LIMIT)

        looper, _out, looper_ended = _start(loop)
        deadline = time.monotonic() + _LIMIT
        while not waiter_ended.is_set():
            assert not looper_ended.is_set(), \
                f"the waiting put got no room in {_ROUNDS} rounds"
            assert time.monotonic() < deadline
            waiter_ended.wait(0.01)
        assert waiter_out == [None]
        # The room the loop's first get made went to the waiting put: the loop's own put
        # waits behind it, for the item "w" to be taken.
        assert looped == ["first"]
        _wait_blocked(looper)
        assert q.get(timeout=_LIMIT) == "w"
        looper.join(_LIMIT)
        assert looped == ["first", *range(_ROUNDS - 1)]


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_waiting_puts_take_room_in_the_order_they_started_waiting(
        tmp_path: Path, engine: str) -> None:
    """A put_many of two items at the head of the line holds back a put of one behind it
    while only one slot is free."""
    with SyncQueue.create(queue_path(tmp_path, engine), maxsize=2) as q:
        q.put_many(["a", "b"])
        calls = [lambda: q.put_many(["c1", "c2"], timeout=_LIMIT),
                 lambda: q.put("d", timeout=_LIMIT),
                 lambda: q.put("e", timeout=_LIMIT)]
        started = []
        for call in calls:
            started.append(_start(call))
            _wait_blocked(started[-1][0])
        (_t0, out0, head), (_t1, out1, second), (_t2, out2, third) = started
        assert q.get(timeout=_LIMIT) == "a"
        # One slot is free: the put of two at the head may not have it, nor may the puts
        # behind it take it first.
        assert not head.wait(0.2)
        assert not second.is_set() and not third.is_set()
        assert q.get(timeout=_LIMIT) == "b"
        assert head.wait(_LIMIT) and out0 == [None]
        assert q.get(timeout=_LIMIT) == "c1"
        assert second.wait(_LIMIT) and out1 == [None]
        assert not third.is_set()
        assert q.get(timeout=_LIMIT) == "c2"
        assert third.wait(_LIMIT) and out2 == [None]
        assert q.get_many(2, timeout=_LIMIT) == ["d", "e"]


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_put_nowait_and_a_put_past_its_timeout_take_room_out_of_turn(
        tmp_path: Path, engine: str) -> None:
    with SyncQueue.create(queue_path(tmp_path, engine), maxsize=2) as q:
        q.put_many(["a", "b"])
        head, head_out, head_ended = _start(lambda: q.put_many(["c1", "c2"],
                                                                 timeout=_LIMIT))
        _wait_blocked(head)
        with pytest.raises(Full):
            q.put_nowait("x")
        assert q.get(timeout=_LIMIT) == "a"
        q.put_nowait("x")  # the free slot, though a put waits for two
        assert q.get(timeout=_LIMIT) == "b"
        # One slot is free, and the put at the head of the line wants two: a put waits
        # behind it until its timeout passes, then takes the slot out of turn.
        started = time.monotonic()
        q.put("y", timeout=0.2)
        assert time.monotonic() - started >= 0.2
        assert not head_ended.is_set()
        assert q.get_many(2, timeout=_LIMIT) == ["x", "y"]
        head_ended.wait(_LIMIT)
        assert head_out == [None]
        assert q.get_many(2, timeout=_LIMIT) == ["c1", "c2"]
