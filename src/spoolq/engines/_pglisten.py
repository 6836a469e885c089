"""Waiting for records of the PostgreSQL engine: the connection that LISTENs on an
engine's channel while a wait is in progress, the wake-ups it read outside a wait, and
cancelling waits.

Statements that make records ready send ``pg_notify(channel, payload)``, the
payload being the queue's name (see :func:`payload`). A :class:`Listener`
turns those notifications into the hints ``PostgresEngine.wait_ready``
returns. It raises psycopg's errors; the engine translates them.

The connection listens only while a wait is in progress. A listener that no one
reads would make the server block writing to it once the socket is full, and the
notification queue, shared by every database of the server, could then never shrink
past what it did not read: after a while every statement that notifies would fail.
A wait that starts listening again looks once for records made ready meanwhile.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import EngineError
from ._pgpool import Conn, connection, readable
from .base import WaitCancel

__all__ = ["Listener", "any_ready", "payload", "ready_now"]

log = logging.getLogger("spoolq")

_MAX_PAYLOAD = 1000  # pg_notify refuses payloads near 8000 bytes; longer names notify ""
_WAIT_SLICE = 0.1  # seconds; how soon cancel_waits ends a wait_ready
_RETRY_PAUSE = 0.5  # seconds between attempts to listen again while the server is away
_DRAIN_ROUNDS = 64  # socket-fulls of notifications one call reads at most
_HEARD_MAX = 1000  # queue names remembered from notifications read outside a wait


def payload(queue: str) -> str:
    """The notification payload that announces records of ``queue``; ``""`` stands
    for every queue whose name is too long to send."""
    return queue if len(queue.encode()) <= _MAX_PAYLOAD else ""


def _look(pool: ConnectionPool[Conn] | None, statement: sql.Composed, queue: str,
          where: str, unanswered: bool, what: str) -> bool:
    """Whether ``statement`` finds something for ``queue`` on a pooled connection: False
    when the engine is closing (``pool`` is None), ``unanswered`` when no connection
    comes within a slice of a wait or the server is away."""
    if pool is None:
        return False
    try:
        with connection(pool, _WAIT_SLICE, where) as conn:
            row = conn.execute(statement, {"queue": queue}).fetchone()
    except (PoolTimeout, psycopg.OperationalError) as exc:
        log.debug("spoolq: %s: no %s for a wait: %s", where, what, str(exc).strip())
        return unanswered
    return row is not None and bool(row[0])


def any_ready(pool: ConnectionPool[Conn] | None, counts: sql.Composed, queue: str,
              where: str) -> bool:
    """Whether the counts of ``queue`` (read by ``counts``) show ready records, for a
    wait without notifications. False, so that the wait polls again, when the engine
    is closing (``pool`` is None) or no connection comes within a poll's slice: the
    server is away (a restart), or every connection of the pool is busy."""
    return _look(pool, counts, queue, where, False, "counts")


def ready_now(pool: ConnectionPool[Conn] | None, statement: sql.Composed, queue: str,
              where: str) -> bool:
    """Whether a take would find a record of ``queue`` now (``statement`` tells), for a
    wait whose thread last looked before the engine listened again. True, so that the
    caller looks, when no connection comes within a slice: its take then says why."""
    return _look(pool, statement, queue, where, True, "look")


class Listener:
    """One engine's listening connection, opened by ``connect`` on the first wait.

    One thread listens at a time; :meth:`drain` lets the engine's other calls
    read what piled up meanwhile without waiting for that thread. When the last wait
    in progress ends the connection stops listening (it stays open); the next wait
    listens again, then runs ``ready_now`` on it, or has the wait's ``look`` (which uses
    another connection) look, for records made ready while no one listened.

    The engines of one process on one database and schema share one listener (see
    ``_pgwaits``), so a process holding many queue handles keeps one listening
    connection, not one per handle.
    """

    def __init__(self, channel: str, where: str, connect: Callable[[float], Conn],
                 ready_now: sql.Composed) -> None:
        self.channel = channel
        self.where = where
        self.conn: Conn | None = None
        self._connect = connect
        self._ready_now = ready_now
        self._closed = False  # close() ran: no wait opens a connection again
        self._listening = False  # whether conn listens (a wait is in progress)
        # The _read that began the current listening: a look at a queue before it may
        # have missed what was made ready while conn did not listen.
        self._since = 0
        self._lock = threading.Lock()  # held by the thread that listens
        # Guards _heard and _waiting, and makes noting a notification and looking at
        # _waiting one step against a wait that registers and takes its mark.
        self._state = threading.Lock()
        # Payloads read while no wait for them was in progress -> when (see _read).
        self._heard: dict[str, int] = {}
        self._waiting: dict[str, int] = {}  # payload -> waits in progress for it
        # Per thread: queue -> the _read of the thread's last look at the queue (a take
        # that saw every ready record, a wait that returned True). Its next wait wakes
        # for what was read after that: the thread has not seen those records.
        self._marks = threading.local()
        self._cancelled_at = -math.inf  # time.monotonic() of the last cancel()
        # Every notification read (by a wait or by drain) gets the next number of
        # _read, and its payload remembers the last one in _read_at: a wait that began
        # before then, still waiting for its turn to listen, was meant to hear it too.
        self._read = 0
        self._read_at: dict[str, int] = {}
        self._overflow_at = 0  # when _read_at was full: every earlier wait wakes
        # time.monotonic() of the first failed attempt to listen again, while no attempt
        # since succeeded: the outage the log reported once, and reports the end of.
        self._away_since: float | None = None

    def _note(self, note_payload: str) -> None:
        """Remember that a notification of ``note_payload`` was read (lock held)."""
        # _read grows last: whoever reads it finds every notification up to it noted.
        read = self._read + 1
        if note_payload in self._read_at or len(self._read_at) < _HEARD_MAX:
            self._read_at[note_payload] = read
        else:
            self._read_at.clear()
            self._overflow_at = read
        self._read = read

    def _note_unwaited(self, note_payload: str) -> None:
        """Note a notification read by a wait for another queue; when no wait for its
        queue is in progress, keep it for the next one, as :meth:`drain` does."""
        with self._state:
            self._note(note_payload)
            if note_payload not in self._waiting:
                self._keep(note_payload)

    def _keep(self, kept: str) -> None:
        """Keep ``kept`` for the next wait (``_state`` held); one entry per queue name."""
        if kept in self._heard or len(self._heard) < _HEARD_MAX:
            self._heard[kept] = self._read

    def _lost(self) -> None:
        """The listening session ended (lock held): notifications to any queue may have
        been missed, so every wait that began before looks again."""
        self._overflow_at = self._read + 1
        self._read = self._overflow_at

    def _thread_marks(self) -> dict[str, int]:
        marks: dict[str, int] | None = getattr(self._marks, "marks", None)
        if marks is None:
            marks = self._marks.marks = {}
        return marks

    def before_take(self, queue: str) -> tuple[bool, int]:
        """:meth:`drain` for a take of ``queue``, and where the notifications read stand
        then, before the take's snapshot: give both to :meth:`after_take`."""
        return self.drain(taking=queue), self._read

    def after_take(self, queue: str, announced: bool, mark: int, saw_all: bool) -> None:
        """After a take of ``queue`` in this thread. When it ``saw_all`` ready records
        (it took fewer than it asked for) it saw those of every notification read
        before ``mark``: the thread's next :meth:`wait` for ``queue`` wakes only for
        later ones, and a notification kept from before ``mark`` is dropped. When it
        did not, and drain read one for the queue (``announced``), that one is kept:
        the records it announced may be left."""
        if not saw_all:
            if announced:
                self.keep(queue)
            return
        self._set_mark(self._thread_marks(), queue, mark)
        kept = payload(queue)
        if kept and self._heard.get(kept, mark + 1) <= mark:
            with self._state:
                if self._heard.get(kept, mark + 1) <= mark:
                    del self._heard[kept]

    def _read_since(self, mark: int, wanted: str) -> bool:
        """Whether a notification for ``wanted`` was read after ``mark``."""
        return max(self._read_at.get(wanted, 0), self._read_at.get("", 0),
                   self._overflow_at) > mark

    def drain(self, taking: str | None = None) -> bool:
        """Read the notifications that reached the listener since the last wait.

        Unread, they fill the socket; the server then stops reading the notification
        queue for this listener, and that queue, shared by the whole server, fills
        up until every statement that notifies fails (after days of a busy queue).
        The queues they name are remembered for the next :meth:`wait`, except
        ``taking``: the take about to run sees the records they announce. True when
        one for ``taking`` was read: a take that stopped at the number of records it
        asked for may have left some of them, and then calls :meth:`keep`.
        """
        listener = self.conn
        if listener is None or not readable(listener):
            return False
        if not self._lock.acquire(blocking=False):
            return False  # a wait in another thread is reading them
        skip = None if taking is None else payload(taking)
        skipped = False
        try:
            if self.conn is listener:
                for _ in range(_DRAIN_ROUNDS):
                    for note in listener.notifies(timeout=0):
                        with self._state:
                            self._note(note.payload)
                            if note.payload == skip:
                                skipped = True
                            else:
                                self._keep(note.payload)
                    if not readable(listener):
                        break
        except psycopg.Error:
            # A broken listener; the next wait opens another.
            self.conn = None
            self._listening = False
            self._lost()
            listener.close()
        finally:
            self._lock.release()
        return skipped

    def keep(self, queue: str) -> None:
        """Remember a notification for ``queue`` that :meth:`drain` read for a take
        which may have left records it announced: the next :meth:`wait` for ``queue``
        returns at once, and one listening now within a slice."""
        with self._state:  # not the listener's lock: a wait holds it while it listens
            self._keep(payload(queue))

    def wait(self, queue: str, timeout: float, cancel: WaitCancel | None,
             look: Callable[[str], bool], cancelled: Callable[[float], bool]) -> bool:
        """Wait up to ``timeout`` seconds for a hint that records of ``queue`` became
        ready; see ``PostgresEngine.wait_ready`` for what True and False mean. ``look``
        looks for ready records on another connection; ``cancelled(started)`` tells
        whether the waiting handle's waits begun at ``started`` were cancelled."""
        started = time.monotonic()
        deadline = started + timeout
        wanted = payload(queue)
        marks = self._thread_marks()
        with self._state:
            # Notifications read since this thread last looked at the queue (or, when
            # it never did, from now on) are this wait's: the thread has not seen the
            # records they announce, even when another thread's wait read them.
            # A thread that never looked (an async queue waits on a thread of a pool
            # and takes on another) cannot tell when its caller last did: it looks once.
            known = marks.get(queue)
            mark = self._read if known is None else known
            self._waiting[wanted] = self._waiting.get(wanted, 0) + 1
        ready, seen = False, mark
        try:
            ready, seen = self._wait(queue, wanted, mark, known is None, deadline, look, lambda: (
                self._cancelled_at >= started or cancelled(started)
                or bool(cancel and cancel.cancelled) or time.monotonic() >= deadline))
            return ready
        finally:
            with self._state:
                left = self._waiting[wanted] - 1
                if left:
                    self._waiting[wanted] = left
                else:
                    del self._waiting[wanted]
                idle = not self._waiting
            # After True the caller looks; after False nothing for the queue was read
            # up to seen.
            self._set_mark(marks, queue, self._read if ready else seen)
            if idle:
                self._stop_if_idle()

    def _stop_if_idle(self) -> None:
        """Stop listening when no wait is in progress. The thread that holds the lock
        meanwhile is a drain or a close (soon done), or a wait that began since, whose
        end stops it then."""
        while self._listening and self.conn is not None:
            if self._lock.acquire(timeout=_WAIT_SLICE):
                try:
                    with self._state:
                        idle = not self._waiting
                    if idle:
                        self._unlisten()
                finally:
                    self._lock.release()
                return
            if self._waiting:
                return

    def _unlisten(self) -> None:
        """Stop listening (lock held); the notifications that came before are noted."""
        listener = self.conn
        if listener is None or not self._listening:
            return
        self._listening = False
        try:
            listener.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(self.channel)))
            for note in listener.notifies(timeout=0):
                self._note_unwaited(note.payload)
        except psycopg.Error as exc:
            # The session ended (see _listen); the next wait opens another.
            self.conn = None
            listener.close()
            log.debug("spoolq: %s: no UNLISTEN: %s", self.where, str(exc).strip())

    def _listen_again(self, queue: str) -> bool:
        """LISTEN on the open connection (lock held), then look for ready records of
        ``queue``: whether there are."""
        assert self.conn is not None
        # Two statements, not one (nor one pipeline): LISTEN takes effect when it
        # commits, and a look in its transaction may miss a put committed meanwhile.
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        self._began()
        row = self.conn.execute(self._ready_now, {"queue": queue}).fetchone()
        return row is not None and bool(row[0])

    def _began(self) -> None:
        """Note that conn listens from now on (lock held)."""
        with self._state:
            self._read += 1
            self._since = self._read
        self._listening = True

    def _set_mark(self, marks: dict[str, int], queue: str, mark: int) -> None:
        if queue not in marks and len(marks) >= _HEARD_MAX:
            marks.clear()  # a thread that forgot its looks only wakes more often
        marks[queue] = mark

    def _wait(self, queue: str, wanted: str, mark: int, unknown: bool, deadline: float,
              look: Callable[[str], bool], ended: Callable[[], bool]) -> tuple[bool, int]:
        """Whether a hint came, and how far the notifications read were looked at.
        ``unknown``: the thread never looked at ``queue`` (``mark`` is now)."""
        seen = self._read
        if self._read_since(mark, wanted) or self._took_heard(wanted):
            return True, seen
        # One thread listens at a time; the others wait their turn in short slices too,
        # and end it when the listening thread read a notification for their queue.
        looked = False
        while not self._lock.acquire(timeout=_WAIT_SLICE):
            seen = self._read
            if self._read_since(mark, wanted):
                return True, seen
            if not looked and self._listening and (unknown or mark < self._since):
                # Listening began after this thread's last look at the queue.
                looked = True
                if look(queue):
                    return True, seen
            if ended():
                return False, seen
        try:
            if self._closed:  # while it waited its turn, the last engine closed
                return False, seen
            # The listening thread reads every notification itself: up to the end.
            # ``looked`` then also when no look is due (the thread looked since).
            return self._listen(queue, wanted, mark, looked or not (
                unknown or mark < self._since), deadline, ended), self._read
        finally:
            self._lock.release()

    def _listen(self, queue: str, wanted: str, mark: int, looked: bool, deadline: float,
                ended: Callable[[], bool]) -> bool:
        if self.conn is None:
            # The first wait starts listening; a later one finds no listener when
            # the server could not be reached: both cannot know what was missed.
            return self._reopen(ended, deadline)
        # Heard by another thread's wait (or a drain) while this one waited its turn.
        if self._read_since(mark, wanted) or self._took_heard(wanted):
            return True
        try:
            if not self._listening:
                if self._listen_again(queue):
                    return True
            elif not looked:  # listening began after the thread's last look, if any
                row = self.conn.execute(self._ready_now, {"queue": queue}).fetchone()
                if row is not None and row[0]:
                    return True
            # Listening in short slices is what lets cancel end a wait: nothing
            # else can interrupt a connection waiting for notifications.
            while (remaining := deadline - time.monotonic()) > 0:
                if ended():
                    return False
                heard = False
                # Every notification of a batch is read and noted, not only up to the
                # first one for this queue: the others may be another thread's.
                for note in self.conn.notifies(timeout=min(remaining, _WAIT_SLICE),
                                               stop_after=1):
                    self._note_unwaited(note.payload)
                    heard = heard or note.payload in (wanted, "")
                if heard or self._took_heard(wanted):
                    return True
        except psycopg.Error as exc:
            # The server ended the listener's session (pg_terminate_backend,
            # idle_session_timeout, a restart). Notifications may have been missed
            # meanwhile: when a new listener connects, look again; when none can,
            # the server is gone and that is the error.
            self.conn.close()
            self.conn = None
            self._listening = False
            self._lost()
            log.info("spoolq: %s: the listening connection was lost: %s", self.where,
                     str(exc).strip())
            return self._reopen(ended, deadline)
        return False

    def _took_heard(self, wanted: str) -> bool:
        """Whether a notification for ``wanted`` (or for every queue) was kept for a
        wait, forgetting it."""
        if wanted not in self._heard and "" not in self._heard:
            return False
        with self._state:
            found = self._heard.pop(wanted, None) is not None
            return self._heard.pop("", None) is not None or found

    def _reopen(self, ended: Callable[[], bool], deadline: float) -> bool:
        """Open the listening connection, trying again while the server cannot be
        reached (a restart, a failover): True once it listens, False when the wait
        ended first. A server that is still away then fails the caller's next call.

        An outage is logged once, as a warning, however many waits meet it, and its
        end (the first attempt that listens again) as information."""
        while True:
            try:
                # An attempt that no one answers (a proxy whose server is away)
                # lasts until the wait ends, or 2 s, the least libpq waits.
                self._start(deadline - time.monotonic())
            except psycopg.OperationalError as exc:
                if self._away_since is None:
                    self._away_since = time.monotonic()
                    log.warning("spoolq: %s: the database server cannot be reached; "
                                "waits for new records try to listen again every %gs: %s",
                                self.where, _RETRY_PAUSE, str(exc).strip())
            else:
                if self._away_since is not None:
                    log.info("spoolq: %s: the database server is back, %.1fs after it "
                             "could not be reached; listening for new records again",
                             self.where, time.monotonic() - self._away_since)
                    self._away_since = None
                return True
            pause = time.monotonic() + _RETRY_PAUSE
            while not ended():
                if time.monotonic() >= pause:
                    break
                time.sleep(_WAIT_SLICE)
            else:
                return False

    def _start(self, timeout: float) -> None:
        if self._closed:
            raise EngineError(f"{self.where}: wait_ready: the engine is closed")
        listener = self._connect(timeout)
        try:
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException:
            listener.close()
            raise
        self.conn = listener
        self._began()

    def cancel(self) -> None:
        """Make every :meth:`wait` in progress return False within a fraction of a
        second; later calls wait as usual."""
        self._cancelled_at = time.monotonic()

    def close(self) -> None:
        """Cancel the waits in progress, then close the listening connection, if any."""
        self.cancel()  # a wait in another thread keeps the connection until it ends
        with self._lock:
            listener, self.conn = self.conn, None
            self._listening = False
            self._closed = True
        if listener is not None:
            listener.close()
