"""Counts that follow other handles and processes while the queue is only asked its size.

A handle re-reads its counts when it polls (a blocked get, a put waiting for room). One
that only puts never polls, so ``qsize()``, ``empty()``, ``full()`` and ``stats`` read
them again themselves once a poll interval has passed since the last read, without ever
waiting: a counts-only read (no reaping, which writes) made at once when the handle's
lock is free and the engine reads without waiting for another process (an ``inline``
engine, or one that offers ``no_wait()``, SQLite), else handed to another thread (the
async queue's worker, or one of the few reader threads the process keeps for every
handle, see ``_READERS``) whose result a later call sees.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ._atonce import Later
from .engines import Counts, Engine
from .engines.base import forks
from .errors import ClosedError, EngineError, LockTimeout, Unavailable

__all__ = ["FreshCounts"]

log = logging.getLogger("spoolq")

_OFF_BOUND = 2.0
"""Seconds a read handed to another thread waits for the handle's lock, and (on an engine
that can bound its calls, the remote one) for the engine: a server that stalls leaves the
counts as they were rather than hold the handle's lock until the engine's timeout."""
_RETRY = 0.5
"""Seconds after a failed read before qsize() tries again, at the least."""
_FAILED = (Unavailable, ClosedError, EngineError, OSError)
_READERS = 4
"""Threads of the process that read the counts handed to them, shared by every handle:
a thread started for each read would make qsize() wait for it to start (as long as the
process's other threads keep the interpreter busy), and one handle polled in a loop
would start one every poll interval."""


class _Readers:
    """The reader threads, started one for each read handed over until there are
    ``_READERS``. Handing a read over is a put on a ``SimpleQueue``, which never waits;
    they are daemon threads, idle on it between reads."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.started = 0
        # Held only to count a reader about to start: threads handing reads over at once
        # (each start waits for its thread to run) would each see fewer than _READERS
        # started and start more.
        self._starting = threading.Lock()

    def after_fork_in_child(self) -> None:
        """The parent's reader threads are gone: new ones start when needed, and reads
        the parent had handed over are not the child's."""
        self.jobs = queue.SimpleQueue()
        self.started = 0
        self._starting = threading.Lock()  # a thread of the parent may have held it

    def post(self, job: Callable[[], None]) -> None:
        """Hand ``job`` to a reader; RuntimeError when none could be started (at
        interpreter shutdown), the job dropped."""
        if self.started < _READERS:
            with self._starting:
                slot = self.started
                if slot < _READERS:
                    self.started += 1
            if slot < _READERS:
                try:
                    threading.Thread(target=self._run, name=f"spoolq-counts-{slot}",
                                     daemon=True).start()
                except RuntimeError:
                    with self._starting:
                        self.started -= 1
                        if not self.started:
                            raise
        self.jobs.put(job)

    def _run(self) -> None:
        jobs = self.jobs  # a forked child's readers take from a queue of their own
        while True:
            job = jobs.get()
            try:
                job()
            except Exception:  # a reader serves every handle
                log.exception("spoolq: reading the counts failed")
            del job  # not kept while waiting: it would keep its handle from being collected


_readers = _Readers()

if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_readers.after_fork_in_child)


class FreshCounts:
    """The reads of the counts that ``qsize()`` and ``stats`` make (see the module)."""

    # Set up by QueueCore.__init__.
    engine: Engine
    name: str
    lock: threading.RLock
    closed: bool
    _last_refresh: float
    # Defined by QueueCore.
    refresh_due: Callable[[], bool]
    _refresh_locked: Callable[..., Counts]
    # (No __init__: a class attribute until the first read.)
    _count_read_sent = -1
    """``forks()`` when a read was handed to another thread that has not ended: in a forked
    child that thread is gone, and the value is the parent's."""
    _count_retry_at = 0.0

    def fresh_counts(self, later: Later | None = None) -> None:
        """Read the counts again if a poll interval has passed since the last read (or a
        write whose outcome is unknown left them to be read), never waiting for anything.

        ``later`` runs a call on another thread (the async queue's worker ``post``): then
        only an ``inline`` engine is read here. Without it an engine with ``no_wait()`` is
        read here too, and the others on a reader thread of the process."""
        if not self.refresh_due() or self.closed:
            return
        now = time.monotonic()
        if self._count_read_sent == forks() or now < self._count_retry_at:
            return
        engine = self.engine
        no_wait = None if later is not None else getattr(engine, "no_wait", None)
        if (getattr(engine, "inline", False) or no_wait is not None) and \
                self.lock.acquire(blocking=False):
            try:
                if self.closed:
                    return
                with contextlib.nullcontext() if no_wait is None else no_wait():
                    self._refresh_locked(dead=True)
                return
            except LockTimeout:
                pass  # another process writes: read on another thread, which may wait
            except _FAILED as exc:
                self._count_failed(exc)
                return
            finally:
                self.lock.release()
        self._count_read_sent = forks()
        try:
            (_readers.post if later is None else later)(self._read_counts_off)
        except RuntimeError as exc:  # at interpreter shutdown, or a worker that ended
            self._count_read_sent = -1
            self._count_failed(exc)

    def _read_counts_off(self) -> None:
        """On another thread: read the counts, for a bounded time (see ``_OFF_BOUND``)."""
        try:
            deadline = time.monotonic() + _OFF_BOUND
            bound: Any = getattr(self.engine, "call_deadline", None)
            if not self.lock.acquire(timeout=_OFF_BOUND):
                self._count_retry_at = time.monotonic() + _RETRY
                return  # a long call of another thread: it or a later one reads them
            try:
                if self.closed:
                    return
                with contextlib.nullcontext() if bound is None else bound(deadline):
                    self._refresh_locked(dead=True)
            finally:
                self.lock.release()
        except _FAILED as exc:
            self._count_failed(exc)
        finally:
            self._count_read_sent = -1

    def _count_failed(self, exc: BaseException) -> None:
        """The counts stay as they were; the next try waits a little, whatever qsize's
        callers do in the meantime."""
        self._count_retry_at = time.monotonic() + _RETRY
        log.debug("spoolq: queue %r: reading the counts failed: %s", self.name, exc)
