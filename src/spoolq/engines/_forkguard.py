"""Keeping ``os.fork()`` out of SQLite calls.

Python's sqlite3 lets other threads run while SQLite works, so without this a thread
could fork while another thread is inside SQLite. The child then holds a copy of SQLite's
memory taken in the middle of that call: a mutex of SQLite's own held (its memory
allocator's, its file system layer's) that no thread of the child will ever release, and
the locks SQLite keeps in memory for each file it has open (shared by every connection
of the process to that file) showing a transaction that no connection of the child runs.
The child's first SQLite call then waited for ever on the mutex, or for the full busy
timeout on a lock that is not there.

So the SQLite engine runs each of its calls, from the first statement of a transaction
to its commit or rollback, between :func:`enter` and :func:`leave`, and a fork waits
(in a ``before`` handler of :func:`os.register_at_fork`) until no thread is between them,
holding off calls that start meanwhile until it is made. Calls of different threads
never wait for each other: :func:`enter` appends the thread's id to a list and
:func:`leave` removes it (each of them atomic in CPython), and only while a fork is being
made does a call take a lock. A call may be nested in another of its thread (an engine
that connects anew in a forked child, a signal handler that forks or calls the engine):
a fork waits only for the other threads' calls, and a nested call never waits.

An exception that a signal handler raises (KeyboardInterrupt) comes at the first check
of the interpreter after the signal, and a Python function checks as it starts: so
:func:`leave` is the list's own ``remove``, in which nothing comes between the call and
the removal, and :func:`enter` removes its mark again whatever exception it ends with.
A thread that ended marked all the same (an exception set in it by another thread) is
not waited for.
"""

from __future__ import annotations

# Imported first, so that their own before-fork handlers, which take a lock of theirs
# until the fork is made, run after the one here (they run in the reverse order of their
# registering): a fork waiting for a call must not hold them, as a signal handler that
# runs in that call may need them (logging, ThreadPoolExecutor.submit).
import concurrent.futures.thread  # noqa: F401
import logging
import os
import sys
import threading
from collections.abc import Callable
from threading import get_ident

__all__ = ["before_fork", "enter", "leave"]

_inside: list[int] = []
"""The id of each thread inside a call, once per call it is inside (nested ones too).
Changed in place only: :data:`leave` is its ``remove``."""
_forking = 0  # forks under way: one from a signal handler can come while another waits
_hooks: list[Callable[[], None]] = []  # see before_fork
_lock = threading.RLock()  # a signal handler may fork while its thread holds it
_changed = threading.Condition(_lock)  # a held-off call left, or a fork was made
_FIRST_PAUSE, _LONGEST_PAUSE = 0.00005, 0.01  # a fork's looks at the calls under way

leave: Callable[[int], None] = _inside.remove
"""End the call that :func:`enter` began, which returned its argument. A C call: no
exception can come between it and the removal (see above), and no lock is taken; a
fork waiting looks at the list again and again, more seldom as it waits longer."""


def before_fork(hook: Callable[[], None]) -> None:
    """Have ``hook()`` run by each fork once no other thread is inside an SQLite call, in
    the forking thread, just before the fork is made; not when the forking thread is
    inside a call itself (a signal handler's fork), which the hook could break."""
    _hooks.append(hook)


def enter() -> int:
    """Mark the calling thread as inside an SQLite call; return what :func:`leave` takes."""
    me = get_ident()
    try:
        _inside.append(me)  # first, then the look at _forking: see _before
        if _forking:
            _wait_for_fork(me)
    except BaseException:  # KeyboardInterrupt at any point: the call does not begin
        _inside.remove(me)
        raise
    return me


def _wait_for_fork(me: int) -> None:
    """A call that began while another thread forks: unless nested in a call of its own
    thread, which the fork does not wait for, wait for the fork, then begin. The call's
    mark is in the list whenever this returns or raises."""
    while _forking and _inside.count(me) == 1:
        try:
            _inside.remove(me)
            with _lock:
                _changed.notify_all()
                while _forking:
                    _changed.wait()
        finally:
            _inside.append(me)


def _others_inside(me: int) -> bool:
    """Whether a thread other than ``me`` is inside a call; the marks of threads that
    ended are dropped (no thread of theirs can leave the call)."""
    if len(_inside) == _inside.count(me):
        return False
    alive = sys._current_frames()
    for ended in {t for t in _inside if t not in alive}:
        while ended in _inside:
            _inside.remove(ended)
    return len(_inside) > _inside.count(me)


def _before() -> None:
    """Before a fork: wait until no other thread is inside an SQLite call, and keep new
    ones out until the fork is made. The lock is held from here to the fork, so that no
    thread holds it in the child; waiting on the condition lets other threads run."""
    global _forking  # noqa: PLW0603 - one state for the whole process
    _lock.acquire()
    _forking += 1  # first, then the look at _inside: a call appends, then looks
    me = get_ident()
    pause = _FIRST_PAUSE
    while _others_inside(me):
        _changed.wait(pause)
        pause = min(pause * 2, _LONGEST_PAUSE)
    if me not in _inside:
        for hook in _hooks:
            try:
                hook()
            except Exception:  # the fork goes on: a hook is never a reason to refuse it
                logging.getLogger("spoolq").exception("spoolq: a hook before a fork failed")


def _after_in_parent() -> None:
    global _forking  # noqa: PLW0603
    _forking -= 1
    _changed.notify_all()
    _lock.release()


def _after_in_child() -> None:
    """In the child only the forking thread runs: the calls it was inside of, if any,
    are the only ones; the lock and the condition are new, with no waiter."""
    global _forking, _lock, _changed  # noqa: PLW0603
    me = get_ident()
    _inside[:] = [me] * _inside.count(me)
    _forking = 0
    _lock = threading.RLock()
    _changed = threading.Condition(_lock)


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(before=_before, after_in_parent=_after_in_parent,
                        after_in_child=_after_in_child)
