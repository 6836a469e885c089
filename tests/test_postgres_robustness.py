"""The postgres engine under failures and concurrency: forked processes, sessions the
server ends, foreign schemas, lock order and counter stripes, closing while waiting,
large records, notifications read outside a wait, opening behind locks and on older
servers."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

import spoolq

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

import psycopg
from psycopg import sql

from spoolq.engines import Lease, StoredRecord, _pgpool
from spoolq.engines._pgsql import SCHEMA_VERSION, ddl
from spoolq.engines.postgres import PostgresEngine

from . import pg_support
from .pg_support import execute as _execute

engine = pg_support.engine  # the fixture: an engine on the test's own schema


# ---- processes started with fork ---------------------------------------------------------

def _in_child(run: Callable[[], bool]) -> tuple[int, int]:
    """Fork; the child runs ``run`` and exits 0 when it returned True. Returns the
    child's pid and the read end of a pipe that gets the child's verdict."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        verdict = b"\1"
        try:
            os.close(read)
            verdict = b"\0" if run() else b"\1"
        except BaseException:
            pass
        finally:
            os.write(write, verdict)
            os._exit(0)
    os.close(write)
    return pid, read


def _verdict(pid: int, read: int, timeout: float = 20.0) -> bytes:
    try:
        ready, _, _ = select.select([read], [], [], timeout)
        return os.read(read, 1) if ready else b"timeout"
    finally:
        os.close(read)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_forked_child_uses_connections_of_its_own(pg_url: str, pg_schema: str) -> None:
    parent = PostgresEngine(pg_url, schema=pg_schema)
    try:
        parent.append("parent", [b"p"] * 7, [1] * 7, 1.0)
        parent.append("child", [b"c"] * 3, [1] * 3, 1.0)

        def child_run() -> bool:
            child = PostgresEngine(pg_url, schema=pg_schema)
            answers = [child.counts("child").ready for _ in range(100)]
            child.close()
            try:
                parent.counts("parent")
            except spoolq.EngineError as exc:
                refused = "fork" in str(exc)
            else:
                refused = False
            parent.close()  # lets go of the parent's connections without ending them
            return refused and answers == [3] * 100

        pid, read = _in_child(child_run)
        answers = [parent.counts("parent").ready for _ in range(100)]
        assert _verdict(pid, read) == b"\0"
        assert answers == [7] * 100
        assert parent.counts("parent").ready == 7
    finally:
        parent.close()


def test_a_child_forked_while_a_queue_was_opening_can_open_queues(
        pg_url: str, pg_schema: str) -> None:
    def child_run() -> bool:
        child = PostgresEngine(pg_url, schema=pg_schema)
        child.append("q", [b"x"], [1], 1.0)
        child.close()
        return True

    # The parent's lock of its pools is held at the fork, as while another of its
    # threads opens or closes a queue.
    with _pgpool._POOLS_LOCK.lock:
        pid, read = _in_child(child_run)
    assert _verdict(pid, read, timeout=10) == b"\0"
    eng = PostgresEngine(pg_url, schema=pg_schema)
    try:
        assert eng.counts("q").ready == 1
    finally:
        eng.close()


# ---- schemas that are not spoolq's -------------------------------------------------------

def _relations(url: str, schema: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s", (schema,))}


@pytest.mark.parametrize("layout", ["same table names", "text values"])
def test_tables_of_the_same_names_but_not_spoolq_are_a_format_error(
        pg_url: str, pg_schema: str, layout: str) -> None:
    ident = sql.Identifier(pg_schema)
    _execute(pg_url, sql.SQL("CREATE SCHEMA {}").format(ident))
    meta = "(id int)" if layout == "same table names" else "(key text, value text)"
    _execute(pg_url, sql.SQL("CREATE TABLE {}.meta " + meta).format(ident))
    _execute(pg_url, sql.SQL("CREATE TABLE {}.records (id int)").format(ident))
    _execute(pg_url, sql.SQL("CREATE TABLE {}.counts (id int)").format(ident))
    if layout == "text values":
        _execute(pg_url, sql.SQL("INSERT INTO {}.meta VALUES ('application', 'spoolq'), "
                                 "('schema_version', '1')").format(ident))
    for read_only in (False, True):
        with pytest.raises(spoolq.FormatError, match="not a spoolq queue"):
            PostgresEngine(pg_url, schema=pg_schema, read_only=read_only)


@pytest.mark.parametrize("relation", [
    "VIEW {}.meta AS SELECT 1 AS x", "VIEW {}.report AS SELECT 1 AS x", "SEQUENCE {}.invoices"])
def test_a_schema_holding_views_or_sequences_is_not_taken_over(
        pg_url: str, pg_schema: str, relation: str) -> None:
    ident = sql.Identifier(pg_schema)
    _execute(pg_url, sql.SQL("CREATE SCHEMA {}").format(ident))
    _execute(pg_url, sql.SQL("CREATE " + relation).format(ident))
    before = _relations(pg_url, pg_schema)
    with pytest.raises(spoolq.FormatError, match="not a spoolq queue"):
        PostgresEngine(pg_url, schema=pg_schema)
    assert _relations(pg_url, pg_schema) == before


# ---- connections the server ended ---------------------------------------------------------

def _terminate(url: str, pids: list[int]) -> None:
    """End these backends, as a server restart would, and wait until they are gone."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
        deadline = time.monotonic() + 10
        while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                            (pids,)).fetchone() != (0,):
            assert time.monotonic() < deadline, "the backends did not end"
            time.sleep(0.02)


def test_calls_after_the_server_ended_every_pooled_connection_go_through(
        pg_url: str, pg_schema: str) -> None:
    eng = PostgresEngine(pg_url, schema=pg_schema, pool_size=3)
    try:
        eng.append("q", [b"a", b"b"], [1, 1], time.time())
        with contextlib.ExitStack() as stack:
            pids = [stack.enter_context(eng._conn("test")).info.backend_pid for _ in range(3)]
        _terminate(pg_url, pids)
        assert eng.counts("q").ready == 2
        assert [r.data for r in eng.take("q", 5, time.time(), None)] == [b"a", b"b"]
        with eng._conn("test") as conn:
            assert conn.info.backend_pid not in pids
    finally:
        eng.close()


def test_a_backend_killed_in_a_transaction_loses_and_duplicates_nothing(
        engine: PostgresEngine, pg_url: str, pg_schema: str) -> None:
    engine.append("q", [b"job"], [3], time.time())
    (rec,) = engine.take("q", 1, time.time(), Lease("me", time.time() + 60))
    errors: list[BaseException] = []

    def release() -> None:
        try:
            engine.release("q", [(rec.id, rec.attempts)], "me", not_before=0.0,
                           max_attempts=None)
        except BaseException as exc:
            errors.append(exc)

    with psycopg.connect(pg_url) as blocker:
        blocker.execute(sql.SQL("SELECT id FROM {}.records WHERE id = %s FOR UPDATE").format(
            sql.Identifier(pg_schema)), (rec.id,))
        releaser = threading.Thread(target=release)
        releaser.start()
        deadline = time.monotonic() + 10
        while not (blocked := blocker.execute(
                "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (blocker.info.backend_pid,)).fetchall()):
            assert time.monotonic() < deadline, "the release never waited for the row"
            time.sleep(0.02)
        _terminate(pg_url, [row[0] for row in blocked])
        releaser.join(10)
        blocker.rollback()
    assert len(errors) == 1 and isinstance(errors[0], spoolq.EngineError)
    assert isinstance(errors[0].__cause__, psycopg.OperationalError)
    assert engine.counts("q")[:2] == (0, 1), "the lease must still be held"
    assert engine.release("q", [(rec.id, rec.attempts)], "me", not_before=0.0,
                          max_attempts=None) == [rec.id]
    (again,) = engine.take("q", 5, time.time(), None)
    assert (again.id, again.data, again.attempts) == (rec.id, b"job", 1)
    assert engine.counts("q") == (0, 0, 0, 0)


# ---- lock order -------------------------------------------------------------------------

def _wait_for_lock_waits(url: str, schema: str, count: int) -> None:
    """Wait until ``count`` statements on ``schema`` wait for a lock."""
    deadline = time.monotonic() + 10
    with psycopg.connect(url, autocommit=True) as conn:
        while conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND position(%s in query) > 0", (schema,)).fetchone() != (count,):
            assert time.monotonic() < deadline, f"{count} statements never waited"
            time.sleep(0.02)


def _leased_out_of_place(engine: PostgresEngine, url: str,
                         schema: str) -> tuple[StoredRecord, StoredRecord]:
    """Two records leased by "me" whose row versions lie in the table in the reverse of
    their id order: a statement that reads the table in its own order meets them so."""
    now = time.time()
    engine.append("q", [b"a", b"b"], [1, 1], now)
    first, second = engine.take("q", 2, now, Lease("me", now + 60))
    engine.release("q", [(first.id, first.attempts)], "me", not_before=0.0, max_attempts=None)
    (first,) = engine.take("q", 1, now, Lease("me", now + 60))
    with psycopg.connect(url) as conn:
        in_place = [row[0] for row in conn.execute(sql.SQL(
            "SELECT id FROM {}.records ORDER BY ctid").format(sql.Identifier(schema)))]
    assert in_place == [second.id, first.id]
    return first, second


@pytest.mark.parametrize("settle", ["ack", "release"])
@pytest.mark.parametrize("purge_first", [True, False])
def test_a_purge_never_deadlocks_with_a_consumer_settling_the_same_records(
        pg_url: str, pg_schema: str, settle: str, purge_first: bool) -> None:
    consumer = PostgresEngine(pg_url, schema=pg_schema)
    admin = PostgresEngine(pg_url, schema=pg_schema)
    try:
        first, second = _leased_out_of_place(consumer, pg_url, pg_schema)
        held = [(first.id, first.attempts), (second.id, second.attempts)]
        errors: list[BaseException] = []

        def run(call: Callable[[], object]) -> threading.Thread:
            def target() -> None:
                try:
                    call()
                except BaseException as exc:
                    errors.append(exc)
            thread = threading.Thread(target=target)
            thread.start()
            return thread

        def purge() -> None:
            admin.purge("q")

        def settle_them() -> None:
            if settle == "ack":
                consumer.ack("q", held, "me")
            else:
                consumer.release("q", held, "me", not_before=0.0, max_attempts=None)

        with psycopg.connect(pg_url) as blocker:
            # Holding the first record makes both calls queue up behind it.
            blocker.execute(sql.SQL("SELECT id FROM {}.records WHERE id = %s FOR UPDATE")
                            .format(sql.Identifier(pg_schema)), (first.id,))
            threads = []
            for call in ([purge, settle_them] if purge_first else [settle_them, purge]):
                threads.append(run(call))
                _wait_for_lock_waits(pg_url, pg_schema, len(threads))
            blocker.rollback()
            for thread in threads:
                thread.join(10)
        assert errors == []
        assert consumer.counts("q") == (0, 0, 0, 0)
    finally:
        consumer.close()
        admin.close()


# ---- closing ----------------------------------------------------------------------------

def test_close_ends_a_wait_in_another_thread_at_once(pg_url: str, pg_schema: str) -> None:
    eng = PostgresEngine(pg_url, schema=pg_schema)
    assert eng.wait_ready("q", 0) is True
    heard: list[bool] = []
    waiter = threading.Thread(target=lambda: heard.append(eng.wait_ready("q", 10)))
    waiter.start()
    time.sleep(0.3)  # listening by now
    start = time.monotonic()
    eng.close()
    assert time.monotonic() - start < 1.0
    waiter.join(10)
    assert heard == [False]
    eng.close()
    with pytest.raises(spoolq.EngineError, match="closed"):
        eng.wait_ready("q", 0)


# ---- large records ----------------------------------------------------------------------

def test_a_large_record_travels_about_as_fast_as_the_driver_moves_bytes(
        engine: PostgresEngine, pg_url: str) -> None:
    big = os.urandom(8 << 20)
    with psycopg.connect(pg_url) as conn:  # the yardsticks: one bytea in, then out
        conn.execute("CREATE TEMP TABLE yardstick (data bytea)")
        start = time.monotonic()
        conn.execute("INSERT INTO yardstick VALUES (%b)", (big,))
        put_yardstick = time.monotonic() - start
        cur = conn.cursor(binary=True)
        start = time.monotonic()
        cur.execute("SELECT data FROM yardstick")
        assert cur.fetchone() == (big,)
        take_yardstick = time.monotonic() - start
    start = time.monotonic()
    engine.append("q", [big], [len(big)], time.time())
    put = time.monotonic() - start
    start = time.monotonic()
    (taken,) = engine.take("q", 1, time.time(), None)
    take = time.monotonic() - start
    assert taken.data == big
    # Sent as text (hex digits in an array literal), a record took 10 to 15 times
    # as long to put, and received as text, about 3 times as long to take.
    assert put < 4 * put_yardstick + 0.2, (put, put_yardstick)
    assert take < 2 * take_yardstick + 0.2, (take, take_yardstick)
    engine.restore("q", [taken])
    (peeked,) = engine.peek("q", 1)
    assert (peeked.id, peeked.data) == (taken.id, big)
    assert engine.counts("q") == (1, 0, len(big), len(big))


# ---- notifications read outside a wait ---------------------------------------------------

def _wait_event(conn: psycopg.Connection[tuple[object, ...]], pid: int) -> object:
    row = conn.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s",
                       (pid,)).fetchone()
    return None if row is None else row[0]


def test_a_busy_consumer_that_no_longer_waits_is_no_listener(engine: PostgresEngine,
                                                             pg_url: str) -> None:
    assert engine.wait_ready("q", 0) is True  # listened while it waited
    assert engine._listener is not None
    pid = engine._listener.info.backend_pid
    with psycopg.connect(pg_url, autocommit=True) as producer:
        # Many notifications while the consumer is busy and never waits: a backend still
        # listening would block writing them and stop reading the server's notification
        # queue, which every notifying statement of the server would then fill up.
        producer.execute("SELECT pg_notify(%s, 'other' || g || repeat('x', 1000)) "
                         "FROM generate_series(1, 50000) g",
                         (engine.channel,))
        for _ in range(20):
            assert _wait_event(producer, pid) != "ClientWrite"
            assert engine.take("q", 1, time.time(), None) == []
            time.sleep(0.02)
    start = time.monotonic()
    assert engine.wait_ready("q", 0.3) is False  # listening again, nothing to take
    assert time.monotonic() - start >= 0.25


def test_a_wake_up_read_outside_a_wait_is_kept_for_the_next_wait(
        engine: PostgresEngine, pg_url: str, pg_schema: str) -> None:
    assert engine.wait_ready("q", 0) is True
    producer = PostgresEngine(pg_url, schema=pg_schema)
    try:
        producer.append("q", [b"x"], [1], time.time())
        time.sleep(0.2)  # the notification reached the listener's socket
        engine.append("other", [b"y"], [1], time.time())  # reads it
        start = time.monotonic()
        assert engine.wait_ready("q", 5) is True
        assert time.monotonic() - start < 1.0
        producer.append("q", [b"x"], [1], time.time())
        time.sleep(0.2)
        assert len(engine.take("q", 5, time.time(), None)) == 2  # reads it, and sees both
        assert engine.wait_ready("q", 0.3) is False
    finally:
        producer.close()


# ---- counter stripes ----------------------------------------------------------------------

def _stripes(url: str, schema: str) -> dict[tuple[str, int], str]:
    """Each counter stripe with the transaction that last wrote it."""
    with psycopg.connect(url) as conn:
        return {(row[0], row[1]): row[2] for row in conn.execute(sql.SQL(
            "SELECT queue, slot, xmin::text FROM {}.counts").format(sql.Identifier(schema)))}


@pytest.mark.parametrize("max_attempts", [None, 1])
def test_an_expiry_of_lapsed_and_orphaned_leases_writes_one_stripe_per_queue(
        pg_url: str, pg_schema: str, max_attempts: int | None) -> None:
    """Two expiries that each wrote two stripes of a queue could deadlock on them."""
    eng = PostgresEngine(pg_url, schema=pg_schema, counter_slots=1000)
    try:
        now = time.time()
        eng.append("q", [b"a", b"b", b"c", b"d"], [1] * 4, now)
        eng.take("q", 2, now, Lease("gone", now + 60))
        eng.take("q", 2, now, Lease("slow", now + 0.1))
        time.sleep(0.2)
        before = _stripes(pg_url, pg_schema)
        assert eng.expire("q", time.time(), owners=["gone"], max_attempts=max_attempts) == 4
        after = _stripes(pg_url, pg_schema)
        written = [key for key, xmin in after.items() if before.get(key) != xmin]
        assert sorted(queue for queue, _slot in written) == (
            ["q"] if max_attempts is None else ["q", "q.dead"])
        if max_attempts is None:
            assert [r.data for r in eng.peek("q", 5)] == [b"a", b"b", b"c", b"d"]
        else:
            assert sorted((r.data, r.reason) for r in eng.peek("q.dead", 5)) == [
                (b"a", "owner died"), (b"b", "owner died"),
                (b"c", "lease expired"), (b"d", "lease expired")]
        assert eng.counts("q")[:2] == ((4, 0) if max_attempts is None else (0, 0))
    finally:
        eng.close()


# ---- opening ----------------------------------------------------------------------------

def test_opening_behind_a_lock_held_too_long_is_a_lock_timeout(
        engine: PostgresEngine, pg_url: str, pg_schema: str) -> None:
    outcome: list[BaseException | PostgresEngine] = []

    def open_it() -> None:
        try:
            outcome.append(PostgresEngine(pg_url, schema=pg_schema, lock_timeout=0.2))
        except BaseException as exc:
            outcome.append(exc)

    with psycopg.connect(pg_url) as blocker:
        blocker.execute(sql.SQL("LOCK TABLE {}.meta").format(sql.Identifier(pg_schema)))
        opener = threading.Thread(target=open_it)
        start = time.monotonic()
        opener.start()
        opener.join(3)
        blocker.rollback()
        opener.join(10)
    for leftover in outcome:
        if isinstance(leftover, PostgresEngine):
            leftover.close()
    assert len(outcome) == 1 and isinstance(outcome[0], spoolq.LockTimeout)
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("version", [110000, 120000, 150000])
def test_the_tables_are_created_with_settings_the_server_knows(
        pg_url: str, pg_schema: str, version: int) -> None:
    """autovacuum_vacuum_insert_scale_factor is new in PostgreSQL 13: older servers
    refuse a table that names it, which made every first open fail there."""
    with psycopg.connect(pg_url) as conn:
        statements = ddl(pg_schema, version)
        texts = [statement.as_string(conn) for statement in statements]
        assert any("autovacuum_vacuum_insert_scale_factor" in text
                   for text in texts) == (version >= 130000)
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(pg_schema)))
        for statement in statements:
            conn.execute(statement)
        conn.execute(sql.SQL("INSERT INTO {}.meta VALUES ('application', 'spoolq'), "
                             "('schema_version', %s)").format(sql.Identifier(pg_schema)),
                     (str(SCHEMA_VERSION).encode(),))
    eng = PostgresEngine(pg_url, schema=pg_schema)
    try:
        eng.append("q", [b"x"], [1], 1.0)
        assert eng.counts("q").ready == 1
    finally:
        eng.close()


def test_a_wait_outlasting_idle_session_timeout_goes_on(pg_url: str, pg_schema: str) -> None:
    """The server ends sessions idle longer than idle_session_timeout, and a session
    listening for notifications is idle: a long wait must not fail for that."""
    url = pg_url + ("&" if "?" in pg_url else "?") + "options=-c%20idle_session_timeout%3D300"
    eng = PostgresEngine(url, schema=pg_schema)
    try:
        assert eng.wait_ready("q", 0) is True
        start = time.monotonic()
        assert eng.wait_ready("q", 0.8) is True  # the listener was ended: look again
        assert time.monotonic() - start < 0.8
        assert eng.counts("q").ready == 0  # the pooled connections were ended too
        eng.append("q", [b"x"], [1], time.time())
        assert eng.wait_ready("q", 5) is True
    finally:
        eng.close()


# ---- TCP settings --------------------------------------------------------------------------

def _tcp_settings(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return {name: value for name, value in conn.info.get_parameters().items()
            if name.startswith(("keepalives", "tcp_"))}


def test_connections_give_up_on_a_vanished_server_within_a_minute(pg_url: str,
                                                                  pg_schema: str) -> None:
    eng = PostgresEngine(pg_url, schema=pg_schema)
    try:
        assert eng._pool is not None
        with eng._pool.connection() as conn:
            assert _tcp_settings(conn) == _pgpool.TCP_DEFAULTS
    finally:
        eng.close()
    # settings the connection string names are the user's
    own = pg_url + ("&" if "?" in pg_url else "?") + "keepalives_idle=7"
    with _pgpool.connect(own, 5) as conn:
        assert _tcp_settings(conn) == {**_pgpool.TCP_DEFAULTS, "keepalives_idle": "7"}
