"""The PostgreSQL engine: one queue database shared by many processes and hosts.

Tables live in one schema (``schema="spoolq"`` by default), created on first
use: ``meta`` (settings and the format version), ``records`` (every
record of every named queue, ids from an identity column, so they only grow
and are never reused, even after a crash of the server: see ``_pgids``) and
``counts`` (per-queue counters).

Concurrency. Taking records is ``SELECT … FOR UPDATE SKIP LOCKED``: concurrent
consumers never wait for each other and never take the same row. Every
delivery is identified by ``(id, attempts)``; ``attempts`` grows on each
lease, so it acts as a lease token: a late ack or nack from a lease that
expired and was handed to someone else matches nothing.

Counts. ``counts`` holds several rows ("stripes") per queue. Each transaction
adds its deltas to one stripe picked at random, inside the same statement or
transaction that changes the records, so the sums are exact; reading them
sums at most ``counter_slots`` rows, however large the queue. A single counter
row would serialise every producer and consumer on one row lock held until
commit; with stripes two transactions wait for each other only when they
pick the same stripe.

Time. Lease expiry and delayed visibility are judged by the *database* clock,
so consumers on hosts whose clocks disagree still agree on when a lease runs
out. The engine protocol passes times on the caller's clock; the engine turns
each time ``t`` into ``statement_timestamp() + (t - time.time())``, i.e. the
offset from the caller's clock at the moment of the call, applied to the
database clock. A caller's clock error cancels out; only durations matter.
``peek_leased`` goes the other way: a lease's time left on the database clock
is added to the caller's clock. Infinite times become ``±infinity``, and a finite
one past the ends of ``timestamptz`` counts as at the end (see ``_pgsql.AHEAD``).
``enqueued_at`` is stored as given (it is reported, never compared).

Durability. ``durability`` picks the session's ``synchronous_commit``:
``"fsync"`` -> ``on``: a returned call is flushed to the server's disk (and to
a synchronous standby when one is configured), so it survives a power cut of
the server. ``"commit"`` and ``"buffer"`` -> ``off``: a returned call
survives the calling process being killed; a crash of the database server
or a power cut never corrupts the database but may lose the commits of the
last moments (at most three times ``wal_writer_delay``, 600 ms by default),
like SQLite's WAL with ``synchronous=NORMAL``. ``synchronous_commit=...``
overrides the mapping (for instance ``"remote_apply"`` with standbys).

Connections come from a ``psycopg_pool.ConnectionPool`` shared by every
engine of this process opened with the same connection string and settings
(the pool runs its own maintenance threads). ``wait_ready`` uses one more
connection of its own that LISTENs, while a wait is in progress, for the
notifications sent when records become ready; with ``notify=False`` there are
none, and it reads the counts every tenth of a second instead.

Plans. psycopg prepares a statement on its fifth use on a connection, but
PostgreSQL still plans a prepared statement afresh on every call while the
plan it would make for the actual values looks cheaper than the generic one,
and for a lease of one record it always does: planning then costs more than
running the statement. The pool's connections therefore run with
``plan_cache_mode = force_generic_plan`` (PostgreSQL 12 and later), and every
statement is written so that its generic plan reaches rows through an index
on the queue and the ids it names, whatever the number of rows asked for.

This module holds the engine itself. Its private helpers: ``_pgsql`` (the
SQL), ``_pgparts`` (a batch in statements PostgreSQL accepts, the checks of what
calls are given, counter deltas), ``_pgleases`` (release and expire), ``_pgpool``
(the shared pools and connections), ``_pgschema`` (creating and checking the schema
at open), ``_pgids`` (ids across restarts of the server) and ``_pglisten``
(LISTEN/NOTIFY waiting).
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool

from ..errors import EngineError
from ._checks import as_int
from ._pgids import ID_GAP, RestartCheck
from ._pgleases import LeaseSettling
from ._pglisten import any_ready, payload, ready_now
from ._pgparts import (
    MAX_BIGINT,
    MAX_QUEUE_NAME_BYTES,
    MAX_RECORD_BYTES,
    append_runs,
    atomic,
    check_given,
    check_sizes,
    checked_batch,
    checked_lease_owner,
    checked_meta,
    checked_move_ids,
    checked_name,
    checked_restore,
    counter_deltas,
    held,
    holds_nothing,
    names_nothing,
)
from ._pgparts import parts as statement_parts
from ._pgpool import (
    SYNCHRONOUS_COMMIT,
    Conn,
    PoolKey,
    acquire_pool,
    check_options,
    connect,
    connection,
    describe,
    release_pool,
    translated,
)
from ._pgschema import open_schema
from ._pgsql import compose
from ._pgwaits import Waits, listener_key, make_listener
from .base import (
    Counts,
    Lease,
    LeasedRecord,
    RestoreRefused,
    StoredRecord,
    WaitCancel,
    batch_given,
    check_window,
    distinct_ids,
    nothing_visible,
    refuse_nan,
)

__all__ = ["ID_GAP", "MAX_QUEUE_NAME_BYTES", "MAX_RECORD_BYTES", "SYNCHRONOUS_COMMIT",
           "PostgresEngine"]


class PostgresEngine(LeaseSettling):
    """Queue storage in a PostgreSQL database; see the module docstring for the design.

    ``conninfo`` is a libpq connection string or URL. ``schema`` holds the
    tables (created, with the schema, on first use; it should be dedicated
    to spoolq). ``read_only`` opens an existing queue without writing.
    ``pool_size`` bounds the connections of the pool this process shares.
    ``connect_timeout`` bounds waiting for a connection, ``lock_timeout`` a
    row or table lock (then :class:`LockTimeout`). ``counter_slots`` is the
    number of counter stripes per queue a writer spreads over. ``notify``
    sends a notification on the ``channel`` whenever records become ready.

    Raises :class:`ConfigurationError` for bad settings, :class:`EngineError`
    when the server cannot be reached, :class:`FormatError` when the schema
    holds something other than spoolq tables of a format version this release reads.
    """

    name = "postgres"

    def __init__(self, conninfo: str, *, schema: str = "spoolq", durability: str = "commit",
                 synchronous_commit: str | None = None, read_only: bool = False,
                 pool_size: int = 4, connect_timeout: float = 10.0,
                 lock_timeout: float = 10.0, counter_slots: int = 16,
                 notify: bool = True) -> None:
        synchronous_commit = check_options(schema, durability, synchronous_commit, pool_size,
                                           counter_slots, connect_timeout, lock_timeout)
        self.where = describe(conninfo, schema)
        self.schema = schema
        self.read_only = read_only
        self.channel = f"spoolq.{schema}"
        if len(self.channel.encode()) > 63:  # channel names are identifiers: 63 bytes at most
            self.channel = "spoolq." + hashlib.sha256(schema.encode()).hexdigest()[:32]
        self._conninfo = conninfo
        self._connect_timeout = float(connect_timeout)
        self._slots = counter_slots
        self._notify = notify
        self._sql = compose(schema, notify=notify)
        self._pool: ConnectionPool[Conn] | None = None
        self._restarts = None if read_only else RestartCheck(self._sql, schema, self.where)
        self._pid = os.getpid()
        self._lock_timeout = f"{max(1, round(lock_timeout * 1000))}ms"
        self._setup()
        settings = (("synchronous_commit", synchronous_commit),
                    ("lock_timeout", self._lock_timeout),
                    ("default_transaction_read_only", "on" if read_only else "off"))
        self._pool_key: PoolKey = (self._pid, conninfo, settings, pool_size)
        with self._guard("open"):
            self._pool = acquire_pool(self._pool_key, self._connect_timeout)
        # The listening connection is the process's, shared by its engines (see _pgwaits).
        timeout = self._connect_timeout
        self._waits = Waits(listener_key(conninfo, schema, timeout), make_listener(
            self.channel, self.where, lambda left: connect(conninfo, min(timeout, left)),
            self._sql.ready_now))

    # ---- connections and errors ---------------------------------------------------------

    def _guard(self, what: str) -> AbstractContextManager[None]:
        """Translate psycopg's errors into spoolq's, keeping the original as ``__cause__``."""
        return translated(self.where, what, self._connect_timeout)

    def _check_process(self, what: str) -> None:
        if os.getpid() != self._pid:
            raise EngineError(
                f"{self.where}: {what}: this queue was opened by process {self._pid}, the "
                "parent of this one; a process started with fork must open its own queue")

    @contextmanager
    def _conn(self, what: str) -> Iterator[Conn]:
        pool = self._pool
        if pool is None:
            raise EngineError(f"{self.where}: {what}: the engine is closed")
        self._check_process(what)
        with self._guard(what), connection(pool, self._connect_timeout, self.where) as conn:
            if self._restarts is not None:  # a read-only engine gives no id out
                self._restarts.check(conn)
            yield conn

    @contextmanager
    def _tx(self, what: str) -> Iterator[Conn]:
        with self._conn(what) as conn, conn.transaction():
            yield conn

    def _setup(self) -> None:
        """Create the schema and tables if missing; check what is there."""
        with self._guard("open"), connect(self._conninfo, self._connect_timeout) as conn:
            self._implied = open_schema(conn, self.schema, self._sql, where=self.where,
                                        read_only=self.read_only, lock_timeout=self._lock_timeout)

    # ---- helpers ------------------------------------------------------------------------

    def _params(self, queue: str, **more: Any) -> dict[str, Any]:
        return {"queue": queue, "slot": random.randrange(self._slots),
                "channel": self.channel, "payload": payload(queue), **more}

    def _add_counts(self, conn: Conn, rows: Sequence[tuple[str, int, int, int, int]]) -> None:
        """Add (queue, ready, leased, stored, raw) deltas to one stripe of each queue."""
        params = counter_deltas(rows, random.randrange(self._slots))
        if params is not None:
            conn.execute(self._sql.add_counts, params)

    def _notify_ready(self, conn: Conn, queue: str) -> None:
        if self._notify:
            conn.execute("SELECT pg_notify(%s, %s)", (self.channel, payload(queue)))

    # ---- the engine protocol ------------------------------------------------------------

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        if not batch_given(records, raw_sizes):
            return []
        records, raw_sizes = checked_batch(queue, records, raw_sizes)
        refuse_nan(self.where, "append", "now", now)
        parts = statement_parts(queue, records, "append")
        self._waits.drain()
        # One stripe for every statement: see _unlease on taking two of one queue.
        params = self._params(queue, now=now)
        with self._conn("append") as conn:
            return append_runs(conn, self._sql.append, self.schema, queue, records,
                               raw_sizes, parts, params)

    def check_records(self, queue: str, records: Sequence[bytes]) -> None:
        """ValueError for a record larger than :data:`MAX_RECORD_BYTES`."""
        check_sizes(queue, records, "append")

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        if type(n) is not int:
            n = as_int(n, "n")
        if lease is not None:
            checked_lease_owner(lease.owner)
        if nothing_visible(self.where, now, lease) or n <= 0 or names_nothing(queue):
            return []  # LIMIT refuses an n < 0
        announced, mark = self._waits.before_take(queue)
        clock = time.time()
        # LIMIT takes a bigint; a larger n means every ready record all the same.
        params = self._params(queue, n=min(n, MAX_BIGINT), now_in=now - clock)
        with self._conn("take") as conn:
            if lease is None:
                rows = conn.execute(self._sql.remove, params, binary=True).fetchall()
            else:
                params.update(owner=lease.owner, until_in=lease.until - clock)
                rows = conn.execute(self._sql.lease, params, binary=True).fetchall()
        self._waits.after_take(queue, announced, mark, saw_all=len(rows) < n)
        return [StoredRecord(*row) for row in rows]

    def restore(self, queue: str, records: Sequence[StoredRecord]) -> None:
        if not records:
            return
        records = checked_restore(self.where, queue, records)
        ids = distinct_ids(queue, records)
        parts = statement_parts(queue, [r.data for r in records], "restore")
        params = self._params(queue)
        with self._conn("restore") as conn:
            check_given(conn, self._sql.last_id, self._sql.next_id, self.schema, queue, ids)
            try:
                with atomic(conn, parts):
                    for part in parts:
                        batch = records[part]
                        conn.execute(self._sql.restore, {
                            **params, "ids": ids[part], "data": [r.data for r in batch],
                            "raw": [r.raw_size for r in batch],
                            "attempts": [r.attempts for r in batch],
                            "enqueued": [r.enqueued_at for r in batch],
                            "reasons": [r.reason for r in batch]})
            except pg_errors.UniqueViolation as exc:
                # One statement in autocommit mode, or one transaction: nothing was inserted.
                raise RestoreRefused(f"cannot restore records into queue {queue!r}: it holds a "
                                 f"record of one of their ids ({exc.diag.message_detail}); "
                                 "nothing was restored") from exc

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        ids, attempts = held(deliveries)
        if not ids or names_nothing(queue) or holds_nothing(owner):
            return []
        with self._conn("ack") as conn:
            rows = conn.execute(self._sql.ack, self._params(
                queue, owner=owner, ids=ids, attempts=attempts)).fetchall()
        return [r[0] for r in rows]

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        n, offset = check_window(as_int(n, "n"), as_int(offset, "offset"))
        if names_nothing(queue):
            return []
        with self._conn("peek") as conn:
            rows = conn.execute(self._sql.peek, {"queue": queue, "n": n, "offset": offset},
                                binary=True).fetchall()
        return [StoredRecord(*row) for row in rows]

    def peek_leased(self, queue: str, n: int, offset: int = 0) -> list[LeasedRecord]:
        n, offset = check_window(as_int(n, "n"), as_int(offset, "offset"))
        if names_nothing(queue):
            return []
        clock = time.time()
        with self._conn("peek_leased") as conn:
            rows = conn.execute(self._sql.peek_leased,
                                {"queue": queue, "n": n, "offset": offset},
                                binary=True).fetchall()
        return [LeasedRecord(StoredRecord(*row[:6]), row[6], clock + row[7]) for row in rows]

    def counts(self, queue: str) -> Counts:
        if names_nothing(queue):
            return Counts(0, 0, 0, 0)
        with self._conn("counts") as conn:
            row = conn.execute(self._sql.counts, {"queue": queue}).fetchone()
        return Counts(0, 0, 0, 0) if row is None else Counts(*row)

    def owners(self, queue: str) -> dict[str, int]:
        if names_nothing(queue):
            return {}
        with self._conn("owners") as conn:
            return {r[0]: r[1] for r in conn.execute(self._sql.owners, {"queue": queue})}

    def move(self, src: str, dst: str, ids: Sequence[int] | None = None) -> int:
        params = {"src": src, "dst": checked_name(dst), "ids": checked_move_ids(ids)}
        if names_nothing(src):
            return 0
        with self._tx("move") as conn:
            row = conn.execute(self._sql.move, params).fetchone()
            moved, stored, raw = row if row is not None else (0, 0, 0)
            if moved:
                self._add_counts(conn, [(src, -moved, 0, -stored, -raw),
                                        (dst, moved, 0, stored, raw)])
                self._notify_ready(conn, dst)
        return int(moved)

    def purge(self, queue: str) -> int:
        if names_nothing(queue):
            return 0
        with self._tx("purge") as conn:
            row = conn.execute(self._sql.purge, {"queue": queue}).fetchone()
            ready, leased, stored, raw = row if row is not None else (0, 0, 0, 0)
            # Subtracting what was deleted (rather than zeroing the counters)
            # stays exact when other writers commit to this queue meanwhile.
            self._add_counts(conn, [(queue, -ready, -leased, -stored, -raw)])
        return int(ready + leased)

    def queues(self) -> list[str]:
        with self._conn("queues") as conn:
            return [r[0] for r in conn.execute(self._sql.queues, {})]

    def get_meta(self, key: str) -> bytes | None:
        if names_nothing(key):  # a key no set_meta stores
            return None
        with self._conn("get_meta") as conn:
            row = conn.execute(self._sql.get_meta, {"key": key}).fetchone()
        return self._implied.get(key) if row is None else bytes(row[0])

    def set_meta(self, key: str, value: bytes) -> None:
        with self._conn("set_meta") as conn:
            conn.execute(self._sql.set_meta, checked_meta(key, value))

    # ---- beyond the protocol ------------------------------------------------------------

    def wait_ready(self, queue: str, timeout: float, cancel: WaitCancel | None = None) -> bool:
        """Wait up to ``timeout`` seconds for a hint that records of ``queue`` became ready.

        True means "look again": records were appended, released or moved
        to ``queue`` by some process (or this is the first call, which starts
        listening and cannot know what happened before, or the server ended the
        listening session and a new one took over). While the server cannot be
        reached (a restart) it tries again until ``timeout``, then returns False;
        the next call reports a server that is still away. It is only a hint:
        a ``take`` may still find nothing, and records whose delay runs out
        send no notification, so keep polling as well. False means nothing
        was heard within ``timeout``, or :meth:`cancel_waits` was called or ``cancel``
        cancelled (within a tenth of a second either way). Unlike
        the other methods this one may be called from a thread of its own while
        another thread uses the engine: it has its own connection.

        An engine opened with ``notify=False`` hears nothing and listens to nothing:
        it reads the counts of ``queue`` every tenth of a second instead and returns
        True once they show ready records.
        """
        self._check_process("wait_ready")
        with self._guard("wait_ready"):
            if not self._notify:
                return self._waits.poll(timeout, cancel, lambda: any_ready(
                    self._pool, self._sql.counts, queue, self.where))
            return self._waits.wait(queue, timeout, cancel, lambda queue: ready_now(
                self._pool, self._sql.ready_now, queue, self.where))

    @property
    def _listener(self) -> Conn | None:
        """The connection listening for this engine's notifications, once a wait opened it."""
        return self._waits.conn

    def cancel_waits(self) -> None:
        """Make every :meth:`wait_ready` in progress return False within a fraction of a
        second (for a shutdown or close); later calls wait as usual."""
        self._waits.cancel()

    def close(self) -> None:
        """Give back this engine's share of the pool, close its listener; twice is harmless.

        A :meth:`wait_ready` in progress in another thread returns False first
        (within a tenth of a second), as after :meth:`cancel_waits`.
        """
        if os.getpid() != self._pid:
            # Inherited through fork: the connections are the parent's, and closing
            # them here would end the parent's sessions. Only let go of them.
            self._waits.forget()
            self._pool = None
            return
        # The pool goes first: a wait starting from now on cannot open a listener, and
        # one opening it now holds the listener's lock, which close() waits for.
        pool, self._pool = self._pool, None
        self._waits.close()
        if pool is not None:
            release_pool(self._pool_key)

    def __repr__(self) -> str:
        return f"<PostgresEngine {self.where}>"
