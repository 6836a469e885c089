"""The waits of one PostgreSQL engine on the listener it shares with the other engines
of its process.

Every engine of a process opened with the same connection string, schema and
``connect_timeout`` waits on one :class:`~spoolq.engines._pglisten.Listener`, and so
on one listening connection: with a connection per engine, a process holding a
blocked consumer per queue handle (some hundred of them) took every connection the
server allows, and every other client, the process's own puts too, was refused
("too many clients"). An engine's :class:`Waits` is its share: its own cancel and
close, which end its waits alone, and the last share to close closes the connection.
A process started with fork gets listeners of its own, as it gets pools of its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from psycopg import sql

from .._inchild import ChildLock
from ..errors import EngineError
from ._pglisten import Listener
from ._pgpool import Conn
from .base import WaitCancel

__all__ = ["Waits"]

_WAIT_SLICE = 0.1  # seconds between two looks of a wait without notifications

ListenerKey = tuple[int, str, str, float]
"""(process id, connection string, schema, connect timeout)."""



class _Shared:
    __slots__ = ("listener", "users")

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.users = 0


_SHARED: dict[ListenerKey, _Shared] = {}
_SHARED_LOCK = ChildLock()


class Waits:
    """One engine's share of its process's listener for ``key``; the listener is made
    by ``make`` when no engine of the process shares it yet."""

    def __init__(self, key: ListenerKey, make: Callable[[], Listener]) -> None:
        self._key = key
        self._cancelled_at = -float("inf")  # time.monotonic() of this share's cancel()
        self._closed = False
        with _SHARED_LOCK.lock:
            shared = _SHARED.get(key)
            if shared is None:
                shared = _SHARED[key] = _Shared(make())
            shared.users += 1
            self._listener = shared.listener

    # What the engine's other calls do with the listener, as they did with one of its own.

    @property
    def conn(self) -> Conn | None:
        """The listening connection, once a wait opened it; None after :meth:`close`."""
        return None if self._closed else self._listener.conn

    @property
    def _listening(self) -> bool:
        return not self._closed and self._listener._listening

    def drain(self) -> bool:
        return False if self._closed else self._listener.drain()

    def before_take(self, queue: str) -> tuple[bool, int]:
        return self._listener.before_take(queue)

    def after_take(self, queue: str, announced: bool, mark: int, saw_all: bool) -> None:
        self._listener.after_take(queue, announced, mark, saw_all)

    def _cancelled(self, started: float) -> bool:
        return self._cancelled_at >= started

    def wait(self, queue: str, timeout: float, cancel: WaitCancel | None,
             look: Callable[[str], bool]) -> bool:
        """:meth:`Listener.wait`, ended by this share's :meth:`cancel` and :meth:`close`
        alone; EngineError once closed."""
        if self._closed:
            raise EngineError(f"{self._listener.where}: wait_ready: the engine is closed")
        return self._listener.wait(queue, timeout, cancel, look, self._cancelled)

    def poll(self, timeout: float, cancel: WaitCancel | None,
             ready: Callable[[], bool]) -> bool:
        """Wait without notifications: ask ``ready()`` every tenth of a second until it
        says True (then True), ``timeout`` seconds pass or a cancel comes (then False)."""
        started = time.monotonic()
        deadline = started + timeout
        while not self._cancelled(started) and not (cancel and cancel.cancelled):
            if ready():
                return True
            if (remaining := deadline - time.monotonic()) <= 0:
                break
            time.sleep(min(remaining, _WAIT_SLICE))
        return False

    def cancel(self) -> None:
        """Make this share's waits in progress return False within a fraction of a
        second; later calls wait as usual."""
        self._cancelled_at = time.monotonic()

    def close(self) -> None:
        """Cancel this share's waits; the last share of the process closes the listener.
        Twice is harmless."""
        self.cancel()
        if self._closed:
            return
        self._closed = True
        with _SHARED_LOCK.lock:
            shared = _SHARED.get(self._key)
            if shared is None or shared.listener is not self._listener:
                return
            shared.users -= 1
            if shared.users > 0:
                return
            del _SHARED[self._key]
        self._listener.close()

    def forget(self) -> None:
        """Let go of the listener without closing it: a process started with fork that
        inherited it must leave its parent's session alone."""
        self._closed = True


def listener_key(conninfo: str, schema: str, connect_timeout: float) -> ListenerKey:
    return (os.getpid(), conninfo, schema, connect_timeout)


def make_listener(channel: str, where: str, connect: Callable[[float], Conn],
                  ready_now: sql.Composed) -> Callable[[], Listener]:
    return lambda: Listener(channel, where, connect, ready_now)
