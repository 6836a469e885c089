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
connection of its own that LISTENs for the notifications sent when records
become ready; with ``notify=False`` there are none, and it reads the counts
every tenth of a second instead.

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
calls are given, counter deltas), ``_pgpool`` (the shared pools and connections),
``_pgschema`` (creating and checking the schema at open), ``_pgids`` (ids across
restarts of the server) and ``_pglisten`` (LISTEN/NOTIFY waiting).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool

from ..errors import EngineError
from ._pgids import ID_GAP, RestartCheck
from ._pglisten import Listener, any_ready, payload
from ._pgparts import (
    MAX_QUEUE_NAME_BYTES,
    MAX_RECORD_BYTES,
    append_runs,
    atomic,
    check_given,
    check_sizes,
    checked_batch,
    checked_meta,
    checked_name,
    checked_restore,
    counter_deltas,
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
from .base import (
    Counts,
    Lease,
    LeasedRecord,
    StoredRecord,
    WaitCancel,
    batch_given,
    check_window,
    dead_queue_name,
    distinct_ids,
    nothing_visible,
    refuse_nan,
)

__all__ = ["ID_GAP", "MAX_QUEUE_NAME_BYTES", "MAX_RECORD_BYTES", "SYNCHRONOUS_COMMIT",
           "PostgresEngine"]

_MAX_BIGINT = (1 << 63) - 1


class PostgresEngine:
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
        self._waits = Listener(self.channel, self.where, self._connect_listener)
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

    def _connect_listener(self, timeout: float) -> Conn:
        if self._pool is None:
            raise EngineError(f"{self.where}: wait_ready: the engine is closed")
        return connect(self._conninfo, min(self._connect_timeout, timeout))

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

    def _unlease(self, conn: Conn, queue: str, groups: Sequence[tuple[list[int], str]],
                 visible_in: float | None, max_attempts: int | None, delta: int) -> None:
        """Turn locked leased records back to ready (or dead letters), inside a transaction.

        ``groups`` pairs ids with the reason their dead letters get. ``visible_in``
        is seconds from now on the database clock; None means at once.
        """
        ids = [i for group, _reason in groups for i in group]
        if not ids:
            return
        dead: list[tuple[int, int, int]] = []
        dead_queue = dead_queue_name(queue)
        if max_attempts is not None and delta == 0:
            reasons = [reason for group, reason in groups for _ in group]
            dead = conn.execute(self._sql.bury, {
                "queue": queue, "ids": ids, "reasons": reasons, "max_attempts": max_attempts,
                "dead_queue": dead_queue}).fetchall()
        buried = {r[0] for r in dead}
        back = [i for i in ids if i not in buried]
        if back:
            conn.execute(self._sql.unlease, {"queue": queue, "ids": back, "delta": delta,
                                             "visible_in": visible_in})
        stored, raw = sum(r[1] for r in dead), sum(r[2] for r in dead)
        # One call, so one stripe per queue: a transaction that took a second stripe
        # of a queue could deadlock with another taking the same two the other way.
        self._add_counts(conn, [(queue, len(back), -len(ids), -stored, -raw),
                                (dead_queue, len(dead), 0, stored, raw)])
        if back:
            self._notify_ready(conn, queue)
        if dead:
            self._notify_ready(conn, dead_queue)

    # ---- the engine protocol ------------------------------------------------------------

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        if not batch_given(records, raw_sizes):
            return []
        refuse_nan(self.where, "append", "now", now)
        records = checked_batch(queue, records)
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
        if nothing_visible(self.where, now, lease) or n <= 0:  # LIMIT refuses an n < 0
            return []
        announced, mark = self._waits.before_take(queue)
        clock = time.time()
        # LIMIT takes a bigint; a larger n means every ready record all the same.
        params = self._params(queue, n=min(n, _MAX_BIGINT), now_in=now - clock)
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
                raise ValueError(f"cannot restore records into queue {queue!r}: it holds a "
                                 f"record of one of their ids ({exc.diag.message_detail}); "
                                 "nothing was restored") from exc

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        if not deliveries:
            return []
        with self._conn("ack") as conn:
            rows = conn.execute(self._sql.ack, self._params(
                queue, owner=owner, ids=[d[0] for d in deliveries],
                attempts=[d[1] for d in deliveries])).fetchall()
        return [r[0] for r in rows]

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str, *,
                not_before: float, max_attempts: int | None, count_attempt: bool = True,
                reason: str = "") -> list[int]:
        if not deliveries:
            return []
        refuse_nan(self.where, "release", "not_before", not_before)
        # A delivery named twice would be locked, and counted, and buried, twice.
        held = list(dict.fromkeys((d[0], d[1]) for d in deliveries))
        with self._tx("release") as conn:
            ids = [r[0] for r in conn.execute(self._sql.lock_held, {
                "queue": queue, "owner": owner, "ids": [d[0] for d in held],
                "attempts": [d[1] for d in held]})]
            at = None if not_before <= 0 else not_before - time.time()  # None: as a put
            self._unlease(conn, queue, [(ids, reason or "nacked")], at, max_attempts,
                          0 if count_attempt else -1)
        return ids

    def expire(self, queue: str, now: float, *, owners: Sequence[str] = (),
               max_attempts: int | None = None) -> int:
        # At NaN no lease runs out by time (NULL compares as false); dead owners' still go.
        now_in = None if math.isnan(now) else now - time.time()
        params = {"queue": queue, "now_in": now_in, "owners": list(owners)}
        if not owners:
            # The common case, checked about once a second by every consumer
            # holding leases: nothing ran out. Then one read answers, instead
            # of a transaction of three round trips that locks nothing.
            with self._conn("expire") as conn:
                row = conn.execute(self._sql.any_expired, params).fetchone()
            if row is None or not row[0]:
                return 0
        lock = self._sql.lock_expired_or_owned if owners else self._sql.lock_expired
        with self._tx("expire") as conn:
            rows = conn.execute(lock, params).fetchall()
            expired = [r[0] for r in rows if r[1]]
            orphaned = [r[0] for r in rows if not r[1]]
            self._unlease(conn, queue, [(expired, "lease expired"), (orphaned, "owner died")],
                          None, max_attempts, 0)
        return len(rows)

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        n, offset = check_window(n, offset)
        with self._conn("peek") as conn:
            rows = conn.execute(self._sql.peek, {"queue": queue, "n": n, "offset": offset},
                                binary=True).fetchall()
        return [StoredRecord(*row) for row in rows]

    def peek_leased(self, queue: str, n: int, offset: int = 0) -> list[LeasedRecord]:
        n, offset = check_window(n, offset)
        clock = time.time()
        with self._conn("peek_leased") as conn:
            rows = conn.execute(self._sql.peek_leased,
                                {"queue": queue, "n": n, "offset": offset},
                                binary=True).fetchall()
        return [LeasedRecord(StoredRecord(*row[:6]), row[6], clock + row[7]) for row in rows]

    def counts(self, queue: str) -> Counts:
        with self._conn("counts") as conn:
            row = conn.execute(self._sql.counts, {"queue": queue}).fetchone()
        return Counts(0, 0, 0, 0) if row is None else Counts(*row)

    def owners(self, queue: str) -> dict[str, int]:
        with self._conn("owners") as conn:
            return {r[0]: r[1] for r in conn.execute(self._sql.owners, {"queue": queue})}

    def move(self, src: str, dst: str, ids: Sequence[int] | None = None) -> int:
        with self._tx("move") as conn:
            row = conn.execute(self._sql.move, {
                "src": src, "dst": checked_name(dst),
                "ids": None if ids is None else list(ids)}).fetchone()
            moved, stored, raw = row if row is not None else (0, 0, 0)
            if moved:
                self._add_counts(conn, [(src, -moved, 0, -stored, -raw),
                                        (dst, moved, 0, stored, raw)])
                self._notify_ready(conn, dst)
        return int(moved)

    def purge(self, queue: str) -> int:
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
            return self._waits.wait(queue, timeout, cancel)

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
            self._waits.conn = self._pool = None
            return
        # The pool goes first: a wait starting from now on cannot open a listener, and
        # one opening it now holds the listener's lock, which close() waits for.
        pool, self._pool = self._pool, None
        self._waits.close()
        if pool is not None:
            release_pool(self._pool_key)

    def __repr__(self) -> str:
        return f"<PostgresEngine {self.where}>"
