"""How a :class:`spoolq.Batcher` calls its sink: a plain function in place, an async one as
a task of its own, cancelled before its batch's lease runs out, and waited for to the end
however often the flush is cancelled meanwhile. An awaitable or a
:class:`concurrent.futures.Future` that a plain function returns is awaited as an async
sink is, and so is one an async sink returns."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._batchsettle import TakenThenCancelled

__all__ = ["call_sink", "in_sink", "sink_margin", "why_ended"]


class _SinkRun:
    """One call of on_flush: its Batcher, and whether the sink (or what a plain one
    returned) still runs."""

    __slots__ = ("batcher", "running")

    def __init__(self, batcher: object) -> None:
        self.batcher = batcher
        self.running = True


_sink_run: contextvars.ContextVar[_SinkRun | None] = contextvars.ContextVar(
    "spoolq_batcher_in_sink", default=None)
"""The call of on_flush this context (an async sink's task, or a task the sink started)
belongs to, if any."""


def in_sink(batcher: object) -> bool:
    """Whether this runs inside an on_flush of ``batcher`` (or a task it started) while
    that sink, or what a plain one returned, has not ended: its flush waits for the sink,
    so a flush awaited here would wait for ever. A task the sink started that runs on
    after it ended is like any other."""
    run = _sink_run.get()
    return run is not None and run.batcher is batcher and run.running


async def call_sink(on_flush: Callable[[list[Any]], Any], batch: list[Any], deadline: float,
                    lease_ttl: float, batcher: object) -> None:
    """Call ``on_flush(batch)``; an async one is cancelled at ``deadline`` (monotonic),
    before the batch's lease runs out.

    An async sink runs as a task of its own, so that a CancelledError it raises by itself
    (a cancelled request inside it) counts as a failed flush instead of ending the
    flusher, while cancelling the caller still cancels the sink. Until the sink has
    ended, the batch stays leased and the flush lock held, so no other flush starts
    while this call still works on the batch: a cancelled call waits for it, through
    further cancellations too. :class:`TakenThenCancelled` when the call was cancelled
    but the sink returned: it took the batch.
    """
    run = _SinkRun(batcher)
    # Set while the sink is called too, so that a task a plain one starts (and returns,
    # say) belongs to this call as one an async sink's task starts does: else a flush()
    # or stop() it awaited would wait for the call that awaits it, until the deadline.
    token = _sink_run.set(run)
    sending: asyncio.Future[BaseException | None] | None = None
    try:
        try:
            result = on_flush(batch)
        except asyncio.CancelledError as exc:
            # Raised by a plain sink itself: nothing was awaited, so nothing cancelled us.
            raise RuntimeError("on_flush raised CancelledError") from exc
        thread = isinstance(result, concurrent.futures.Future)
        if thread:
            # Work handed to a thread pool: its outcome, not the handing, decides the batch.
            result = _thread_outcome(result)
        if inspect.isawaitable(result) and not (inspect.isgenerator(result)
                                                or inspect.isasyncgen(result)):
            # (copies the context)
            sending = asyncio.ensure_future(_contained(result, run))
    finally:
        _sink_run.reset(token)
        if sending is None:
            run.running = False  # returned (or raised): what it started is like any task
    if sending is None:
        await _refuse_generator(result)
        return
    cancelled: asyncio.CancelledError | None = None
    try:
        await asyncio.wait((sending,), timeout=max(deadline - time.monotonic(), 0.0))
    except asyncio.CancelledError as exc:
        cancelled = exc
    timed_out = cancelled is None and not sending.done()
    if not sending.done():
        sending.cancel()
        again = await _wait_out(sending)
        if cancelled is None and again is not None:
            cancelled = again
    run.running = False  # (set already, unless the task was cancelled before it began)
    returned = not sending.cancelled() and sending.exception() is None
    if returned:
        _raise_escaped(sending)
    if cancelled is not None:
        if returned:  # before the cancellation reached it, or in spite of it
            raise TakenThenCancelled(cancelled) from cancelled
        raise cancelled
    if timed_out:
        raise TimeoutError(f"on_flush took longer than lease_ttl ({lease_ttl}s) and was "
                           "cancelled")
    if sending.cancelled():
        raise RuntimeError("on_flush raised CancelledError")
    _raise_escaped(sending)  # (or the sink's own error)


async def _wait_out(task: asyncio.Future[Any]) -> asyncio.CancelledError | None:
    """Wait for ``task`` (cancelled already) to end, through cancellations of the caller,
    which would cut its clean-up short; the last such cancellation, if any."""
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError as exc:
            cancelled = exc
    return cancelled


async def _thread_outcome(future: concurrent.futures.Future[object]) -> object:
    """Await ``future``; cancelled, cancel it, or else (its thread runs it, which cannot be
    interrupted) wait for it to end, through further cancellations, and return its
    result: as an async sink that returns when cancelled, it took the batch."""
    try:
        await _ended(future)
    except asyncio.CancelledError:
        if future.cancel():  # not begun (or cancelled already): it never runs
            raise
        await _wait_out(_ended(future))
    if future.cancelled():  # by its pool's shutdown, say: a failed flush
        raise RuntimeError("the concurrent.futures.Future on_flush returned was cancelled")
    # Read here, not passed on through an asyncio future, which refuses a StopIteration
    # (the thread's next() on an empty iterator, say) and would never end.
    result = future.result()
    if inspect.isawaitable(result):
        # An async function handed to the pool: its thread only made the coroutine, and
        # nothing would run it. Acked, the batch would be lost unsent.
        if inspect.iscoroutine(result) or inspect.isgenerator(result):
            result.close()
        raise TypeError("the work on_flush handed to a pool returned an awaitable (an "
                        "async function submitted?), which would send nothing")
    return result


def _ended(future: concurrent.futures.Future[object]) -> asyncio.Future[None]:
    """An asyncio future that ends (with None) once ``future`` has ended, however."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def mark() -> None:
        if not ended.done():  # (cancelled when its awaiting was)
            ended.set_result(None)

    def on_done(_: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: no one waits
            loop.call_soon_threadsafe(mark)

    future.add_done_callback(on_done)
    return ended


async def _contained(sending: Awaitable[object], run: _SinkRun) -> BaseException | None:
    """Await an async sink; return the KeyboardInterrupt or SystemExit it raises. Raised
    in a task, either would leave the event loop at once, its batch still leased. An
    awaitable or a pool's future it returns (a coroutine it did not await, say), and what
    that resolves to in turn, is awaited as what a plain sink returns is: else the batch
    would be acked before that work ran, and whether or not it failed."""
    try:
        result = await sending
        while True:
            # A generator, as from a plain sink, would be acked with none of it run; so
            # would one a thread's work returned (a stray yield in the function handed on).
            await _refuse_generator(result)
            # What the awaited work resolves to in turn (a coroutine an executor's thread
            # made) is awaited too: else it would never run, and the batch be acked unsent.
            # (A pool thread's outcome is never awaitable: _thread_outcome refuses it.)
            if isinstance(result, concurrent.futures.Future):
                result = await _thread_outcome(result)
            elif inspect.isawaitable(result):
                result = await result
            else:
                break
    except (KeyboardInterrupt, SystemExit) as exc:
        return exc
    finally:
        run.running = False
    return None


async def _refuse_generator(result: object) -> None:
    """Close a generator or async generator that on_flush returned (or what it returned
    resolved to) and raise TypeError: none of its body ran, so it would send nothing."""
    if inspect.isgenerator(result):
        result.close()
    elif inspect.isasyncgen(result):
        await result.aclose()
    else:
        return
    raise TypeError("on_flush returned a generator, which would send nothing")


def _raise_escaped(sending: asyncio.Future[BaseException | None]) -> None:
    """Raise the KeyboardInterrupt or SystemExit an async sink raised, here, where the
    batch goes back to its place before it propagates."""
    escaped = sending.result()
    if escaped is not None:
        raise escaped


def sink_margin(lease_ttl: float) -> float:
    """How long before its batch's lease ends an async sink is cancelled."""
    return min(lease_ttl * 0.05, 1.0)


def why_ended(task: asyncio.Task[None]) -> str:
    """What ended a flusher task, for a message."""
    if task.cancelled():
        return " (cancelled)"
    exc = task.exception()
    return f" on {type(exc).__name__}" if exc is not None else ""
