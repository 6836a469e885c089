"""The SQLite engine across ``os.fork()``: each connection is closed just before a fork
and made anew at the next call, in the parent and in the child.

SQLite keeps the locks a process holds on a file in memory that all the process's
connections to that file share. A child that inherited an open connection took the locks
of its own connections to the file for granted without taking them from the system, so
that the parent, closing its last connection, took itself for the file's last user and
removed the write-ahead log while the child wrote to it: the child's commits were lost.
With no connection open at the fork, the child's connections take their locks from the
system. :mod:`._forkguard` makes the fork wait until no other thread is inside a call of
the engine, then runs :func:`_close_all`.

So every use of the connection is inside a call (between ``enter`` and ``leave``): the
connecting and setting of it, a close, a read of it for a statement; ``no_wait()`` hands
:class:`~._sqlite_schema.BusyTimeout` a stand-in (:class:`_Current`) rather than the
connection of the moment, and keeps its state (the timeout turned off) across the fork.
A connecting anew finds the file the handle opened, or fails (and tries again at the next
call): one removed or replaced in between is neither made anew, empty, nor taken for it.

:class:`Forking` is a part of :class:`spoolq.engines.sqlite.SQLiteEngine`, kept in its
own module.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from ..errors import EngineError
from . import _sqlite_schema as opening
from ._forkguard import before_fork, enter, leave
from .base import PageEnds, forks

__all__ = ["OPEN", "Forking"]

log = logging.getLogger("spoolq")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _Current:
    """What :meth:`BusyTimeout.no_wait` is given for the connection: the engine's of the
    moment at each statement (made anew after a fork), not the one of the ``no_wait()``
    call, which a fork between it and the ``with`` may have closed."""

    __slots__ = ("_engine",)

    def __init__(self, engine: Forking) -> None:
        self._engine = weakref.ref(engine)  # not a cycle: a dropped engine closes

    def execute(self, statement: str) -> Any:
        engine = self._engine()
        if engine is None:
            raise EngineError("the sqlite engine is gone")
        return engine._conn.execute(statement)  # run inside a call: no fork comes between


class Forking:
    """Connecting an SQLite engine, closing it before a fork, and connecting anew after."""

    # Set up by SQLiteEngine.
    path: str
    read_only: bool
    _settings: tuple[float, str, int]
    _connection: sqlite3.Connection
    _cur: sqlite3.Cursor
    _forks: int
    _qnos: dict[str, int]
    _writes: int
    _pages: PageEnds
    _closed: Callable[[], None]
    # Set up here.
    _set_aside = False  # the connection was closed for a fork: the next call connects anew
    _identity: tuple[int, int] | None = None  # the file's (device, inode) at the first open
    _busy: opening.BusyTimeout
    _busy_forks = -1  # forks() when _busy was made: a child's is its own
    _current: _Current

    @property
    def _conn(self) -> sqlite3.Connection:
        """The connection, made anew first after a fork (see :meth:`_reconnect_after_fork`)."""
        if self._forks != forks():
            self._reconnect_after_fork()
        return self._connection

    def _first_connect(self) -> None:
        self._busy, self._busy_forks = opening.BusyTimeout(self._settings[0]), forks()
        self._current = _Current(self)
        self._connect()

    def _connect(self) -> None:
        """Connect, and set the connection and its cursor, inside a call: a fork sees the
        engine either with its connection or without one, never half made. A file other
        than the one first opened (removed, or replaced) is EngineError."""
        inside = enter()
        try:
            self._check_same_file()
            conn = opening.open_connection(self.path, self.read_only, *self._settings)
            try:
                self._check_same_file()
                if self._busy.off:  # within no_wait() across the fork: it still holds
                    conn.execute("PRAGMA busy_timeout = 0")
                # The statements of every transaction and of a take run on one cursor: a
                # new cursor for each (Connection.execute) costs a take a twentieth of its time.
                self._cur = conn.cursor()
            except BaseException:
                conn.close()
                raise
            self._identity = self._identity or _identity(self.path)
            self._connection, self._set_aside = conn, False
            OPEN.add(self)
        except sqlite3.Error as exc:
            raise opening.translate(exc, self.path, "open") from exc
        finally:
            leave(inside)

    def _check_same_file(self) -> None:
        if self._identity is not None and _identity(self.path) != self._identity:
            raise EngineError(
                f"{self.path} was removed or replaced since this handle opened it, and the "
                "handle connects anew after a fork: it neither makes the file anew nor "
                "takes another for it (open the queue again to use the file now there)")

    def _reconnect_after_fork(self) -> None:
        """In a child forked from the process that opened the file, or in either process
        after a fork that closed the connection (:meth:`_close_for_fork`): connect anew.
        A parent's connection still open (the fork was made from inside one of its calls)
        is left alone: SQLite forbids using it in a child, and closing it here could
        checkpoint or remove the WAL that the parent still uses. A handle closed by its
        user stays closed; one whose connecting fails tries again at its next call."""
        here = forks()
        inherited = self._connection
        if isinstance(inherited, sqlite3.Connection):
            opening.INHERITED.append(inherited)
            self._closed()
            self._set_aside = True
        if not self._set_aside:  # closed by its user
            self._forks = here
            return
        if self._busy_forks != here:  # no thread of the child is within the parent's no_wait()
            self._busy, self._busy_forks = opening.BusyTimeout(self._settings[0]), here
        self._writes, self._pages = 0, PageEnds()
        self._qnos.clear()
        self._connect()
        self._forks = here

    def no_wait(self) -> AbstractContextManager[None]:
        """Within it, a call that would wait for another connection's lock raises
        :class:`LockTimeout` at once, having changed nothing."""
        if self._forks != forks():
            self._reconnect_after_fork()  # first: a child's no_wait() is on its own _busy
        return self._busy.no_wait(self._current)  # type: ignore[arg-type]

    def close(self) -> None:
        """Close the connection; later calls raise :class:`ClosedError`, a second close
        does nothing. Inside a call: a fork of another thread waits for it."""
        inside = enter()
        try:
            self._set_aside = False  # closed for good, not for a fork
            conn = getattr(self, "_connection", None)
            if isinstance(conn, sqlite3.Connection):
                self._closed()
                if self._forks == forks():
                    conn.close()
                else:
                    opening.INHERITED.append(conn)  # the parent's (see _reconnect_after_fork)
        finally:
            leave(inside)

    def _close_for_fork(self) -> None:
        """Just before this process forks, with no other thread inside a call of the
        engine: close the connection, for the next call to connect anew."""
        conn = getattr(self, "_connection", None)
        if isinstance(conn, sqlite3.Connection) and self._forks == forks():
            self._closed()
            self._set_aside, self._forks = True, -1  # see SQLiteEngine._conn
            try:
                conn.close()
            except sqlite3.Error as exc:
                log.warning("spoolq: closing %s before a fork failed: %s", self.path, exc)


OPEN: weakref.WeakSet[Forking] = weakref.WeakSet()
"""Every SQLite engine of this process that connected (added inside the call that
connects, which a fork waits for)."""


def _close_all() -> None:
    for engine in list(OPEN):
        try:  # one that fails leaves the others to close
            engine._close_for_fork()
        except Exception:
            log.exception("spoolq: closing %s before a fork failed",
                          getattr(engine, "path", "an sqlite queue"))


before_fork(_close_all)
