"""Whether a thread of the test sleeps inside a call of the queue, read from its frame."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from typing import Any


def _frame(thread: threading.Thread) -> Any:
    """The frame ``thread`` runs. The collector is held off meanwhile: CPython 3.11 can run
    it inside ``sys._current_frames()`` while that holds the lock of the thread list, and
    a finalizer that needs that lock then blocks the process for good."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames().get(thread.ident or -1)
    finally:
        if was_enabled:
            gc.enable()


def blocked(thread: threading.Thread) -> bool:
    """Whether ``thread`` sleeps on a lock inside a call of the queue."""
    frame = _frame(thread)
    names = []
    while frame is not None:
        names.append((frame.f_code.co_name, frame.f_code.co_filename))
        frame = frame.f_back
    in_queue = any("spoolq" in filename for _name, filename in names)
    return in_queue and bool(names) and names[0][0] == "wait"


class WorkerHeld:
    """A job that keeps an async queue's worker thread busy, posted at once; ``async
    with`` waits until the worker runs it and releases it at the end of the block: a call
    that needed the worker cannot finish meanwhile."""

    def __init__(self, q: Any) -> None:
        self.busy, self.release = threading.Event(), threading.Event()
        q._worker.post(self._hold)

    def _hold(self) -> None:
        self.busy.set()
        self.release.wait(30)

    async def __aenter__(self) -> None:
        assert await asyncio.to_thread(self.busy.wait, 10)

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
