"""A put to ``SyncQueue`` wakes only the threads blocked in get that its items can serve
(the first in line, one per item), not every thread that waits."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from spoolq import SyncQueue

from .conftest import queue_path

_LIMIT = 20.0  # seconds; generous bounds on every wait of the test
_WAITERS = 8
_WAIT_CODE = threading.Condition.wait.__code__


class _Getter:
    """A thread blocked in ``q.get()`` that counts how often its sleeps on a condition
    ended (a wake-up, or a timeout: the poll interval is long enough for none)."""

    def __init__(self, q: SyncQueue[Any]) -> None:
        self.wakeups = 0
        self.out: list[Any] = []
        self.served = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(q,), daemon=True)
        self.thread.start()

    def _count(self, frame: FrameType, event: str, _arg: Any) -> None:
        if event == "return" and frame.f_code is _WAIT_CODE:
            self.wakeups += 1

    def _run(self, q: SyncQueue[Any]) -> None:
        sys.setprofile(self._count)
        try:
            self.out.append(q.get(timeout=_LIMIT))
        except BaseException as exc:
            self.out.append(exc)
        finally:
            sys.setprofile(None)
            self.served.set()


def _asleep(getter: _Getter) -> bool:
    frame = sys._current_frames().get(getter.thread.ident or -1)
    return frame is not None and frame.f_code is _WAIT_CODE


def _wait_asleep(getters: list[_Getter]) -> None:
    deadline = time.monotonic() + _LIMIT
    while not all(_asleep(g) for g in getters):
        assert time.monotonic() < deadline, "the getters never went to sleep"
        time.sleep(0.002)


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_a_put_wakes_only_the_getters_its_items_serve(tmp_path: Path, engine: str) -> None:
    with SyncQueue.create(queue_path(tmp_path, engine), poll_interval=30.0) as q:
        getters = []
        for k in range(_WAITERS):
            getters.append(_Getter(q))
            deadline = time.monotonic() + _LIMIT
            while len(q._line) <= k:  # in line before the next one starts
                assert time.monotonic() < deadline
                time.sleep(0.002)
        _wait_asleep(getters)
        for g in getters:
            g.wakeups = 0

        q.put("a")
        assert getters[0].served.wait(_LIMIT)
        _wait_asleep(getters[1:])
        assert getters[0].out == ["a"]
        assert [g.wakeups for g in getters[1:]] == [0] * (_WAITERS - 1)

        q.put_many(["b", "c"])
        assert getters[1].served.wait(_LIMIT) and getters[2].served.wait(_LIMIT)
        _wait_asleep(getters[3:])
        assert sorted(g.out[0] for g in getters[1:3]) == ["b", "c"]
        assert [g.wakeups for g in getters[3:]] == [0] * (_WAITERS - 3)

        q.put_many(list(range(_WAITERS - 3)))
        for g in getters:
            g.thread.join(_LIMIT)
        assert sorted(g.out[0] for g in getters[3:]) == list(range(_WAITERS - 3))
