"""One thread per async queue that runs every engine call in order.

Each result travels back to the event loop with ``call_soon_threadsafe`` as
soon as its call returns, whatever is queued behind it. The
thread holds no reference to the queue object, so an unclosed queue can still
be collected. A result whose waiter was cancelled is handed to the job's
``undo`` callback instead of being dropped (``None`` when the call failed).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["Worker", "wait_pool"]

log = logging.getLogger("spoolq")
R = TypeVar("R")

_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any] | None",
             "Callable[[Any], None] | None"]
_Done = tuple["asyncio.Future[Any]", Any, "BaseException | None", "Callable[[Any], None] | None"]


def _deliver(done: list[_Done]) -> None:
    for fut, result, error, undo in done:
        if fut.cancelled():
            if undo is not None:
                undo(result if error is None else None)
        elif error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)


def _send(loop: asyncio.AbstractEventLoop, done: list[_Done]) -> None:
    try:
        loop.call_soon_threadsafe(_deliver, done)
    except RuntimeError:
        log.warning("spoolq: event loop closed before %d results were delivered", len(done))
        for _fut, result, error, undo in done:
            if error is None and undo is not None:
                undo(result)  # give back what no one will receive


def _run(jobs: queue.SimpleQueue[_Job | None], loop: asyncio.AbstractEventLoop) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        _run_one(job, loop)
        # Not kept while the thread waits for the next job: a job that is a method of the
        # queue would keep an unclosed queue from being collected, and its thread running.
        del job


def _run_one(job: _Job, loop: asyncio.AbstractEventLoop) -> None:
    fn, args, fut, undo = job
    try:
        result, error = fn(*args), None
    except BaseException as exc:
        result, error = None, exc
    if fut is not None:
        # At once, not with the results of the jobs queued behind: one of them may be
        # a long write, and this result's waiter should not wait for it.
        _send(loop, [(fut, result, error, undo)])
    elif error is not None:
        log.error("spoolq: background call %s failed", getattr(fn, "__name__", fn),
                  exc_info=error)


_WAIT_THREADS = 128


@functools.cache
def wait_pool() -> ThreadPoolExecutor:
    """The threads async queues block on while an engine long-polls for items. Not the
    event loop's default executor: a few waiting consumers would take all of its threads
    from the application's own ``asyncio.to_thread`` calls."""
    return ThreadPoolExecutor(_WAIT_THREADS, thread_name_prefix="spoolq-wait")


class Worker:
    """Runs callables on a dedicated thread, in submission order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self.loop = loop
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=_run, args=(self._jobs, loop), name=name,
                                        daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., R], *args: Any,
               undo: Callable[[R | None], None] | None = None) -> asyncio.Future[R]:
        """Run ``fn(*args)`` on the thread; the future resolves on the loop.

        If the future is cancelled before the result arrives, ``undo(result)``
        is called on the loop instead, or ``undo(None)`` if the call raised.
        """
        fut: asyncio.Future[R] = self.loop.create_future()
        self._jobs.put((fn, args, fut, undo))
        return fut

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the thread without waiting; failures are logged."""
        self._jobs.put((fn, args, None, None))

    def stop(self) -> None:
        """Finish the queued jobs, then end the thread (does not wait for it)."""
        self._jobs.put(None)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (it ends once :meth:`stop` was called)."""
        self._thread.join(timeout)
