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

:class:`Forking` is a part of :class:`spoolq.engines.sqlite.SQLiteEngine`, kept in its
own module.
"""

from __future__ import annotations

import logging
import sqlite3
import weakref
from collections.abc import Callable

from . import _sqlite_schema as opening
from ._forkguard import before_fork
from .base import PageEnds, forks

__all__ = ["OPEN", "Forking"]

log = logging.getLogger("spoolq")


class Forking:
    """Closing an SQLite engine's connection before a fork, and connecting anew after."""

    # Set up by SQLiteEngine.
    path: str
    _connection: sqlite3.Connection
    _forks: int
    _set_aside: bool  # the connection was closed for a fork: the next call connects anew
    _writes: int
    _pages: PageEnds
    _closed: Callable[[], None]
    _connect: Callable[[], sqlite3.Connection]

    def _reconnect_after_fork(self) -> None:
        """In a child forked from the process that opened the file, or in either process
        after a fork that closed the connection (:meth:`_close_for_fork`): connect anew.
        A parent's connection still open (the fork was made from inside one of its calls)
        is left alone: SQLite forbids using it in a child, and closing it here could
        checkpoint or remove the WAL that the parent still uses."""
        self._forks = forks()
        inherited = self._connection
        if isinstance(inherited, sqlite3.Connection) or self._set_aside:
            if isinstance(inherited, sqlite3.Connection):
                opening.INHERITED.append(inherited)
            self._closed()
            self._writes, self._pages = 0, PageEnds()
            self._connection = self._connect()

    def _close_for_fork(self) -> None:
        """Just before this process forks, with no other thread inside a call of the
        engine: close the connection, for the next call to connect anew."""
        conn = self._connection
        if isinstance(conn, sqlite3.Connection) and self._forks == forks():
            self._closed()
            self._set_aside, self._forks = True, -1  # see SQLiteEngine._conn
            try:
                conn.close()
            except sqlite3.Error as exc:
                log.warning("spoolq: closing %s before a fork failed: %s", self.path, exc)


OPEN: weakref.WeakSet[Forking] = weakref.WeakSet()
"""Every SQLite engine of this process that connected (added while it connects, which a
fork waits for)."""


def _close_all() -> None:
    for engine in list(OPEN):
        engine._close_for_fork()


before_fork(_close_all)
