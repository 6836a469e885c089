"""How the asyncio queue closes its file: after the calls still waiting gave back what
they took, on the worker thread, in a task that cancelling ``aclose()`` does not cut
short; or, once the queue's event loop stopped, from another loop.

:class:`Closing` is a part of :class:`spoolq.aio.Queue`, kept in its own module; it works
on the queue's state on the queue's event loop, as the rest of the queue does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import TYPE_CHECKING

from ._aiowait import wake_one
from .core import QueueCore
from .worker import Worker

log = logging.getLogger("spoolq")

__all__ = ["Closing", "retrieved"]

_CLOSE_WAIT = 10.0
"""Seconds aclose() waits for waiting calls to give back what they took before it closes
anyway."""


def _closed(closing: asyncio.Future[None], close: asyncio.Future[None]) -> None:
    if not close.cancelled():
        close.exception()  # raised to the call that closed; the others only wait
    wake_one(closing)


def retrieved(task: asyncio.Task[None]) -> None:
    """Marks the close task's error as retrieved: it is raised to the aclose() that
    started it, unless that call was cancelled."""
    if not task.cancelled():
        task.exception()


class Closing:
    """The closing part of :class:`spoolq.aio.Queue`."""

    if TYPE_CHECKING:
        _core: QueueCore
        _worker: Worker
        _loop: asyncio.AbstractEventLoop
        _shutdown: bool
        _immediate: bool
        _closed: bool
        _takers: int
        _close_task: asyncio.Task[None] | None
        _worker_stopped: bool

        @property
        def _unsettled(self) -> int: ...

        def _give_back_untaken(self) -> None: ...

    async def _close_once_given_back(self, closing: asyncio.Future[None]) -> None:
        # A cancellation comes from the loop ending (asyncio.run cancels every task): the
        # close still waits for the give-backs, and the loop for it, or the file would be
        # closed after the loop, if at all before the program exits.
        cancelled = False
        deadline = time.monotonic() + _CLOSE_WAIT
        while (self._takers or self._unsettled) and time.monotonic() < deadline:
            try:
                await asyncio.sleep(0.01)  # waiting or cancelled gets give their items back
            except asyncio.CancelledError:
                cancelled = True
        if self._worker_stopped:  # closed from another loop meanwhile
            wake_one(closing)
        else:
            closed = self._stop_worker(closing)
            cut_at = deadline if self._core.can_cut() else None
            while not closed.done():
                try:
                    if cut_at is None:
                        await asyncio.shield(closed)
                        continue
                    await asyncio.wait([closed], timeout=max(cut_at - time.monotonic(), 0))
                    if not closed.done():  # a call on the worker outlasts the wait: cut it
                        cut_at = None
                        await asyncio.get_running_loop().run_in_executor(
                            None, self._core.cut_running)
                except asyncio.CancelledError:
                    cancelled = True
            if not cancelled:
                closed.result()  # raised to the aclose() that started this task
            elif closed.exception() is not None:
                log.error("spoolq: queue %r: closing failed as the event loop ended",
                          self._core.name, exc_info=closed.exception())
        if cancelled:
            raise asyncio.CancelledError

    def _stop_worker(self, closing: asyncio.Future[None]) -> asyncio.Future[None]:
        self._worker_stopped = True
        closed = self._worker.submit(self._core.close)
        self._worker.stop()
        closed.add_done_callback(partial(_closed, closing))
        return closed

    def _close_unbegun(self, closing: asyncio.Future[None], task: asyncio.Task[None]) -> None:
        """Close the file when the close task was cancelled before it began."""
        if not self._worker_stopped:
            self._stop_worker(closing)

    def _close_left(self) -> bool:
        """Whether the close of an aclose() on this queue's loop is left unfinished, that
        loop stopped: an aclose() on another loop closes the file (or waits for the
        worker to close it)."""
        task = self._close_task
        return task is not None and not task.done() and not self._loop.is_running()

    async def _close_elsewhere(self) -> None:
        """Close from another loop: no task of the queue's loop can be woken from here
        and no worker result can come back through it, so the worker is stopped and
        joined, and the file is closed on a thread of this loop."""
        self._shutdown = self._immediate = self._closed = self._worker_stopped = True
        self._core.cancel_waits()
        self._worker.stop()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._worker.join)
        await loop.run_in_executor(None, self._give_back_untaken)  # the loop stopped first
        await loop.run_in_executor(None, self._core.close)
