"""SQL of the PostgreSQL engine: the schema and every statement, composed once per schema.

The schema name is the only identifier that varies; it goes through
``psycopg.sql.Identifier``. Everything else a statement needs is a bound
parameter. Times are ``timestamptz`` on the database clock: a parameter named
``*_in`` is a number of seconds added to ``statement_timestamp()`` (see the
engine's docstring for how caller times become such offsets), ``±Infinity`` for
the infinite times; a finite offset is held to :data:`AHEAD` and :data:`BEHIND`.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

__all__ = ["AHEAD", "BEHIND", "FORMAT_VERSION", "SCHEMA_VERSION", "Statements", "compose", "ddl"]

FORMAT_VERSION = 1
"""Version of the schema's layout, stored in ``meta`` under ``format_version`` as every
engine records its own."""
SCHEMA_VERSION = FORMAT_VERSION
"""The same, stored under ``schema_version`` too: releases that came before the format
version was recorded read that key alone, so a schema they cannot read must say so there."""

TABLES = ("meta", "records", "counts")

_DDL = (
    "CREATE TABLE {s}.meta (key text PRIMARY KEY, value bytea NOT NULL)",
    # The queue table churns: every record is inserted, updated and deleted
    # within minutes. Vacuuming at 1% dead rows instead of the default 20%
    # keeps the ready index from bloating between runs.
    """CREATE TABLE {s}.records (
        id bigint GENERATED ALWAYS AS IDENTITY,
        queue text NOT NULL,
        leased boolean NOT NULL DEFAULT false,
        visible_at timestamptz NOT NULL DEFAULT '-infinity',
        attempts integer NOT NULL DEFAULT 0,
        owner text,
        enqueued_at double precision NOT NULL,
        raw_size bigint NOT NULL,
        reason text,
        data bytea NOT NULL,
        -- Keyed by queue first: with a key on id alone the planner may take
        -- "ORDER BY id LIMIT n" along it and wade through every record of
        -- the queues that sort before this one's head. Every statement that
        -- names ids names the queue too.
        PRIMARY KEY (queue, id)
    ) WITH (autovacuum_vacuum_scale_factor = 0.01, {insert_scale_factor}
            autovacuum_analyze_scale_factor = 0.02)""",
    # Records arrive compressed by the codec: pglz would only waste time on them.
    "ALTER TABLE {s}.records ALTER COLUMN data SET STORAGE EXTERNAL",
    "CREATE INDEX records_ready ON {s}.records (queue, id) WHERE NOT leased",
    "CREATE INDEX records_leased ON {s}.records (queue, visible_at) WHERE leased",
    # Counter stripes: writers add deltas to one of several rows per queue, so
    # concurrent transactions rarely wait on the same row. Free space on each
    # page lets those updates be HOT (no index change, no new index entries).
    """CREATE TABLE {s}.counts (
        queue text NOT NULL,
        slot smallint NOT NULL,
        ready bigint NOT NULL DEFAULT 0,
        leased bigint NOT NULL DEFAULT 0,
        stored_bytes bigint NOT NULL DEFAULT 0,
        raw_bytes bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (queue, slot)
    ) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.0,
            autovacuum_vacuum_threshold = 1000)""",
)

AHEAD = 9e12
"""Seconds (some 285,000 years) a finite time may lie ahead of the database clock's now,
and :data:`BEHIND` (some 6,000 years) behind it: one further away counts as that far.
``timestamptz`` holds the years 4714 BC to 294276 AD, and a time past them fails the
statement ("timestamp out of range") where the other engines compare it as a number;
``±infinity`` are the infinite times."""
BEHIND = 2e11


def _at(offset: str) -> str:
    """The ``timestamptz`` ``offset`` (a float8 parameter's name) seconds from the
    statement's now: ``±infinity`` for ``±Infinity`` (``make_interval`` refuses them),
    NULL for NULL."""
    value = f"%({offset})s::float8"
    # Not least(greatest(...)): GREATEST skips a NULL, which would become -BEHIND.
    return (f"CASE WHEN {value} = 'Infinity' THEN 'infinity'::timestamptz "
            f"WHEN {value} = '-Infinity' THEN '-infinity'::timestamptz "
            f"ELSE statement_timestamp() + make_interval(secs => "
            f"CASE WHEN {value} > {AHEAD:.0f} THEN {AHEAD:.0f} "
            f"WHEN {value} < -{BEHIND:.0f} THEN -{BEHIND:.0f} ELSE {value} END) END")


_RECORD = "id, data, raw_size, attempts, enqueued_at, reason"
_UPSERT = """INSERT INTO {s}.counts AS c (queue, slot, ready, leased, stored_bytes, raw_bytes)
    {source}
    ON CONFLICT (queue, slot) DO UPDATE SET ready = c.ready + excluded.ready,
        leased = c.leased + excluded.leased, stored_bytes = c.stored_bytes + excluded.stored_bytes,
        raw_bytes = c.raw_bytes + excluded.raw_bytes"""


def _counted(ready: str, leased: str, stored: str, raw: str, rows: str) -> str:
    """A CTE adding one queue's deltas, computed over the CTE ``rows``, to a stripe."""
    source = (f"SELECT %(queue)s, %(slot)s, {ready}, {leased}, {stored}, {raw} FROM {rows} "
              "HAVING count(*) > 0")
    return "counted AS (" + _UPSERT.replace("{source}", source) + ")"


_READY = """SELECT id FROM {s}.records
    WHERE queue = %(queue)s AND NOT leased
      AND visible_at <= {at_now}
    ORDER BY id LIMIT %(n)s FOR UPDATE SKIP LOCKED""".replace("{at_now}", _at("now_in"))

_APPEND = f"""WITH ins AS (
        INSERT INTO {{s}}.records (queue, data, raw_size, enqueued_at)
        SELECT %(queue)s, u.data, u.raw_size, %(now)s
        FROM unnest(%(data)b::bytea[], %(raw)s::bigint[]) WITH ORDINALITY AS u(data, raw_size, n)
        ORDER BY u.n
        RETURNING id, length(data) AS stored, raw_size),
    {_counted("count(*)", "0", "sum(stored)", "sum(raw_size)", "ins")}
    SELECT array_agg(id ORDER BY id), {{notify}} FROM ins"""

# The rows picked (and locked) are found again by key: ``id = ANY(ARRAY(…))``
# is an index condition on ``(queue, id)``. A join with ``picked`` is not: the
# generic plan (see the engine's docstring) guesses that ``LIMIT %(n)s`` keeps
# a tenth of the queue and hash-joins it with every record of the queue.
_REMOVE = f"""WITH picked AS ({_READY}),
    gone AS (DELETE FROM {{s}}.records r
        WHERE r.queue = %(queue)s AND r.id = ANY(ARRAY(SELECT id FROM picked))
        RETURNING r.id, r.data, r.raw_size, r.attempts, r.enqueued_at, r.reason),
    {_counted("-count(*)", "0", "-sum(length(data))", "-sum(raw_size)", "gone")}
    SELECT {_RECORD} FROM gone ORDER BY id"""

_LEASE = f"""WITH picked AS ({_READY}),
    taken AS (UPDATE {{s}}.records r SET leased = true, owner = %(owner)s,
            visible_at = {_at('until_in')},
            attempts = r.attempts + 1
        WHERE r.queue = %(queue)s AND r.id = ANY(ARRAY(SELECT id FROM picked))
        RETURNING r.id, r.data, r.raw_size, r.attempts, r.enqueued_at, r.reason),
    {_counted("-count(*)", "count(*)", "0", "0", "taken")}
    SELECT {_RECORD} FROM taken ORDER BY id"""

_RESTORE = f"""WITH ins AS (
        INSERT INTO {{s}}.records (id, queue, data, raw_size, attempts, enqueued_at, reason)
        OVERRIDING SYSTEM VALUE
        SELECT u.id, %(queue)s, u.data, u.raw_size, u.attempts, u.enqueued_at, u.reason
        FROM unnest(%(ids)s::bigint[], %(data)b::bytea[], %(raw)s::bigint[],
                    %(attempts)s::integer[], %(enqueued)s::float8[], %(reasons)s::text[])
             AS u(id, data, raw_size, attempts, enqueued_at, reason)
        RETURNING length(data) AS stored, raw_size),
    {_counted("count(*)", "0", "sum(stored)", "sum(raw_size)", "ins")}
    SELECT count(*), {{notify}} FROM ins"""

# The deliveries ``(ids, attempts)`` that ``owner`` still holds. ``owner`` is set
# exactly while a record is leased, so matching it says "leased" as well; the
# statement deliberately does not name ``leased``, which would let the planner
# read every leased record of the queue through ``records_leased`` and filter
# them by owner: an ack would then cost as much as all the leases held by every
# consumer. Named by ``(queue, id)``, each delivery is one probe of the key.
_HELD = """FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS d(id, attempts)
    WHERE r.queue = %(queue)s AND r.id = d.id AND r.attempts = d.attempts
      AND r.owner = %(owner)s"""

_LOCK_HELD = f"SELECT r.id FROM {{s}}.records r, {_HELD.removeprefix('FROM ')} ORDER BY r.id " \
    "FOR UPDATE OF r"

# Every statement that waits for row locks takes them in id order: two that
# took them in different orders (an ack and a purge, say) could deadlock.
_ACK = f"""WITH gone AS (DELETE FROM {{s}}.records r
        WHERE r.queue = %(queue)s AND r.id = ANY(ARRAY({_LOCK_HELD}))
        RETURNING r.id, length(r.data) AS stored, r.raw_size),
    {_counted("0", "-count(*)", "-sum(stored)", "-sum(raw_size)", "gone")}
    SELECT id FROM gone ORDER BY id"""

_EXPIRED = "visible_at <= " + _at("now_in")

# Whether any lease of the queue ran out: a plain read of the first entry of
# ``records_leased`` (the lease that ends first), so the periodic check costs
# one round trip, one index probe and no locks while every lease is running.
# Asking for that first entry, rather than for any entry before now, keeps the
# generic plan on the index even when most of the table is leased.
_ANY_EXPIRED = f"""SELECT {_EXPIRED} FROM {{s}}.records WHERE queue = %(queue)s AND leased
    ORDER BY visible_at LIMIT 1"""

# Leases that ran out, and (the second) those held by ``owners``, which died.
# Each row comes with whether its lease ran out. The second reads every leased
# record of the queue, since nothing indexes owners; it is only used on open
# and close. The first is run once the check above found an expired lease.
_LOCK_EXPIRED = f"""SELECT id, true FROM {{s}}.records
    WHERE queue = %(queue)s AND leased AND {_EXPIRED}
    ORDER BY id FOR UPDATE SKIP LOCKED"""

_LOCK_EXPIRED_OR_OWNED = f"""SELECT id, {_EXPIRED} FROM {{s}}.records
    WHERE queue = %(queue)s AND leased AND ({_EXPIRED} OR owner = ANY(%(owners)s::text[]))
    ORDER BY id FOR UPDATE SKIP LOCKED"""

# Leased rows in ``ids`` (locked by the caller) whose attempts reached
# ``max_attempts`` become new records of the dead-letter queue.
# ``reasons`` pairs with ``ids``: the reason each one's dead letter gets. They become
# dead letters in id order, whatever their reasons.
_BURY = """WITH dead AS (
        DELETE FROM {s}.records
        WHERE queue = %(queue)s AND id = ANY(%(ids)s::bigint[]) AND attempts >= %(max_attempts)s
        RETURNING id, data, raw_size, attempts, enqueued_at),
    ins AS (
        INSERT INTO {s}.records (queue, data, raw_size, attempts, enqueued_at, reason)
        SELECT %(dead_queue)s, d.data, d.raw_size, d.attempts, d.enqueued_at, r.reason
        FROM dead d JOIN unnest(%(ids)s::bigint[], %(reasons)s::text[]) AS r (id, reason)
            ON r.id = d.id
        ORDER BY d.id)
    SELECT id, length(data), raw_size FROM dead"""

_UNLEASE = """UPDATE {s}.records SET leased = false, owner = NULL, attempts = attempts + %(delta)s,
        visible_at = coalesce({at_visible}, '-infinity'::timestamptz)
    WHERE queue = %(queue)s AND id = ANY(%(ids)s::bigint[]) RETURNING id""".replace(
        "{at_visible}", _at("visible_in"))

_ADD_COUNTS = _UPSERT.replace("{source}", """SELECT u.* FROM unnest(%(queues)s::text[],
        %(slots)s::smallint[], %(ready)s::bigint[], %(leased)s::bigint[], %(stored)s::bigint[],
        %(raw)s::bigint[]) AS u ORDER BY 1""")

_MOVE = """WITH gone AS (
        DELETE FROM {s}.records WHERE queue = %(src)s AND id IN (
            SELECT id FROM {s}.records WHERE queue = %(src)s AND NOT leased
              AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
            ORDER BY id FOR UPDATE)
        RETURNING id, data, raw_size, enqueued_at),
    ins AS (
        INSERT INTO {s}.records (queue, data, raw_size, enqueued_at)
        SELECT %(dst)s, data, raw_size, enqueued_at FROM gone ORDER BY id)
    SELECT count(*), coalesce(sum(length(data)), 0)::bigint, coalesce(sum(raw_size), 0)::bigint
    FROM gone"""

_PURGE = """WITH gone AS (DELETE FROM {s}.records WHERE queue = %(queue)s AND id IN (
            SELECT id FROM {s}.records WHERE queue = %(queue)s ORDER BY id FOR UPDATE)
        RETURNING leased, length(data) AS stored, raw_size)
    SELECT count(*) FILTER (WHERE NOT leased), count(*) FILTER (WHERE leased),
        coalesce(sum(stored), 0)::bigint, coalesce(sum(raw_size), 0)::bigint FROM gone"""

_PEEK = f"""SELECT {_RECORD} FROM {{s}}.records WHERE queue = %(queue)s AND NOT leased
    ORDER BY id LIMIT %(n)s OFFSET %(offset)s"""

# Leased records in id order, with how many seconds each lease has left on the
# database clock (the engine adds that to its own clock, see the module docs); ±Infinity
# for a lease until ±infinity, where the difference of the timestamps would fail.
_PEEK_LEASED = f"""SELECT {_RECORD}, owner,
        (extract(epoch FROM visible_at) - extract(epoch FROM statement_timestamp()))::float8
    FROM {{s}}.records WHERE queue = %(queue)s AND leased
    ORDER BY id LIMIT %(n)s OFFSET %(offset)s"""

_COUNTS = """SELECT coalesce(sum(ready), 0)::bigint, coalesce(sum(leased), 0)::bigint,
        coalesce(sum(stored_bytes), 0)::bigint, coalesce(sum(raw_bytes), 0)::bigint
    FROM {s}.counts WHERE queue = %(queue)s"""

# Whether a take at the database's now would find a record of the queue: a wait that
# starts listening looks once, for what was made ready while no one listened.
_READY_NOW = """SELECT EXISTS (SELECT 1 FROM {s}.records
    WHERE queue = %(queue)s AND NOT leased AND visible_at <= statement_timestamp())"""

_OWNERS = """SELECT owner, count(*) FROM {s}.records WHERE queue = %(queue)s AND leased
    GROUP BY owner"""

_QUEUES = "SELECT DISTINCT queue FROM {s}.counts ORDER BY queue"
# The last id the records' identity has given out (0 before the first): a restore of a
# larger id would be given out again by a later append.
_LAST_ID = """SELECT coalesce(pg_sequence_last_value(
    pg_get_serial_sequence(format('%%I.records', %(schema)s::text), 'id')), 0)"""
# The id the next append gets, for a role without the privilege on the identity's sequence
# that the statement above needs: the row is rolled back, and the id is never given out.
_NEXT_ID = """INSERT INTO {s}.records (queue, data, raw_size, enqueued_at)
    VALUES (%(queue)s, '', 0, 0) RETURNING id"""
# When the server last started or recovered from a crash, and what the meta key ``%(key)s``
# records of it. A crash of one server process makes the server recover from its WAL
# without restarting: pg_postmaster_start_time() stays, but the shared statistics are
# thrown away and their reset time (which every role may read) becomes the recovery's.
_SERVER_STARTED = """SELECT extract(epoch FROM pg_postmaster_start_time())::text || ' ' ||
        coalesce(extract(epoch FROM (SELECT stats_reset FROM pg_catalog.pg_stat_bgwriter)
                 )::text, ''),
    (SELECT value FROM {s}.meta WHERE key = %(key)s)"""
# Moves the records' identity past ``gap`` ids it may have handed out and lost the record
# of (see the engine's docstring on restarts).
_SKIP_IDS = """SELECT setval(s.seq, coalesce(pg_sequence_last_value(s.seq), 0) + %(gap)s)
    FROM (SELECT pg_get_serial_sequence(format('%%I.records', %(schema)s::text), 'id')::regclass
          AS seq) AS s"""
# Two processes noticing one restart take turns: the second finds it recorded.
_LOCK_RESTART = """SELECT pg_advisory_xact_lock(hashtextextended(
    'spoolq restart ' || %(schema)s::text, 0))"""
_GET_META = "SELECT value FROM {s}.meta WHERE key = %(key)s"
_SET_META = """INSERT INTO {s}.meta (key, value) VALUES (%(key)s, %(value)s)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value"""
# Stores a meta key unless it is there already.
_ADD_META = """INSERT INTO {s}.meta (key, value) VALUES (%(key)s, %(value)s)
    ON CONFLICT (key) DO NOTHING"""


@dataclass(frozen=True, slots=True)
class Statements:
    """Every statement of the engine but the DDL (see :func:`ddl`), bound to one schema."""

    append: sql.Composed
    remove: sql.Composed
    lease: sql.Composed
    restore: sql.Composed
    ack: sql.Composed
    lock_held: sql.Composed
    any_expired: sql.Composed
    lock_expired: sql.Composed
    lock_expired_or_owned: sql.Composed
    bury: sql.Composed
    unlease: sql.Composed
    add_counts: sql.Composed
    move: sql.Composed
    purge: sql.Composed
    peek: sql.Composed
    peek_leased: sql.Composed
    counts: sql.Composed
    ready_now: sql.Composed
    owners: sql.Composed
    queues: sql.Composed
    last_id: sql.Composed
    next_id: sql.Composed
    get_meta: sql.Composed
    set_meta: sql.Composed
    add_meta: sql.Composed
    server_started: sql.Composed
    skip_ids: sql.Composed
    lock_restart: sql.Composed


_TEXTS = {
    "append": _APPEND, "remove": _REMOVE, "lease": _LEASE, "restore": _RESTORE, "ack": _ACK,
    "lock_held": _LOCK_HELD, "any_expired": _ANY_EXPIRED, "lock_expired": _LOCK_EXPIRED,
    "lock_expired_or_owned": _LOCK_EXPIRED_OR_OWNED, "bury": _BURY, "unlease": _UNLEASE,
    "add_counts": _ADD_COUNTS, "move": _MOVE, "purge": _PURGE, "peek": _PEEK,
    "peek_leased": _PEEK_LEASED, "counts": _COUNTS,
    "ready_now": _READY_NOW, "owners": _OWNERS, "queues": _QUEUES,
    "last_id": _LAST_ID, "next_id": _NEXT_ID, "get_meta": _GET_META, "set_meta": _SET_META,
    "add_meta": _ADD_META, "server_started": _SERVER_STARTED, "skip_ids": _SKIP_IDS,
    "lock_restart": _LOCK_RESTART,
}


def ddl(schema: str, server_version: int) -> tuple[sql.Composed, ...]:
    """The statements creating the tables in ``schema`` on a server of ``server_version``
    (as ``connection.info.server_version`` gives it, 150004 for 15.4)."""
    # Vacuuming after inserts alone is new in PostgreSQL 13; older servers refuse it.
    insert_scale_factor = (sql.SQL("autovacuum_vacuum_insert_scale_factor = 0.01,")
                           if server_version >= 130000 else sql.SQL(""))
    return tuple(sql.SQL(text).format(s=sql.Identifier(schema),
                                      insert_scale_factor=insert_scale_factor)
                 for text in _DDL)


def compose(schema: str, *, notify: bool) -> Statements:
    """The statements for tables in ``schema``, each to be run with parameters (``{}``
    when it takes none); with ``notify``, statements that make records ready also send
    ``pg_notify(%(channel)s, %(payload)s)``."""
    # Every statement here is run with parameters, so psycopg reads each "%" in it as
    # the start of a placeholder: one in the schema's name is written "%%".
    ident = sql.SQL('"{}"'.format(schema.replace('"', '""').replace("%", "%%")))
    notify_sql = sql.SQL("pg_notify(%(channel)s, %(payload)s)" if notify else "NULL")
    built = {name: sql.SQL(text).format(s=ident, notify=notify_sql)
             for name, text in _TEXTS.items()}
    return Statements(**built)
