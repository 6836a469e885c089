"""The postgres engine under attack: a crash of one server process (recovered by the
server without a restart), connections ended in the middle of calls, waits across
processes, queue names alike or long, and concurrent opens."""

from __future__ import annotations

import os
import signal
import time

import pytest

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

import psycopg
from psycopg import sql

from spoolq.engines._pgpool import readable
from spoolq.engines.postgres import ID_GAP, PostgresEngine
from spoolq.errors import EngineError, FormatError

from . import pg_support

cluster = pg_support.cluster  # the fixture: a server of the test's own


def _append_retrying(eng: PostgresEngine, record: bytes, timeout: float = 30.0) -> list[int]:
    """An append, tried again while the server is still recovering."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return eng.append("q", [record], [len(record)], time.time())
        except EngineError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_ids_given_out_before_a_crash_of_one_server_process_are_not_given_again(
        cluster: pg_support.Cluster) -> None:
    """A server process killed by the system (the OOM killer, a segfault) makes the
    server recover from its WAL without restarting: pg_postmaster_start_time() stays,
    yet with synchronous_commit=off the commits and sequence advances of the last
    moments are gone. The ids of puts that returned must not be handed out again."""
    eng = PostgresEngine(cluster.url, schema="crash", durability="commit")
    watcher = psycopg.connect(cluster.url, autocommit=True)
    try:
        given: list[int] = []
        # Right after the identity logged its next 32 values ahead: an advance that
        # the crash then loses takes the identity back to ids handed out.
        for k in range(200):
            given += eng.append("q", [b"x"], [1], time.time())
            row = watcher.execute("SELECT log_cnt FROM crash.records_id_seq").fetchone()
            if k > 40 and row is not None and row[0] == 32:
                break
        os.kill(watcher.info.backend_pid, signal.SIGKILL)
        time.sleep(0.5)
        cluster.wait_up()
        (after,) = _append_retrying(eng, b"y")
        assert after > max(given)
    finally:
        watcher.close()
        eng.close()


def test_a_real_restart_moves_the_ids_once(cluster: pg_support.Cluster) -> None:
    """A clean restart of the server, seen by a pool whose connections it ended."""
    eng = PostgresEngine(cluster.url, schema="restart")
    try:
        given = eng.append("q", [b"a", b"b"], [1, 1], time.time())
        cluster.stop()
        cluster.start()
        (after,) = _append_retrying(eng, b"c")
        assert after >= max(given) + ID_GAP
        assert eng.append("q", [b"d"], [1], time.time()) == [after + 1]
        assert [r.data for r in eng.take("q", 10, time.time(), None)] == [b"a", b"b", b"c",
                                                                         b"d"]
    finally:
        eng.close()


def _two_puts_heard(consumer: PostgresEngine, producer: PostgresEngine) -> None:
    """``consumer`` listens (its first wait starts it), then the notifications of two
    puts by ``producer`` to queue "q", a and b, are waiting on its listener."""
    assert consumer.wait_ready("q", 0.1)
    producer.append("q", [b"a"], [1], time.time())
    producer.append("q", [b"b"], [1], time.time())
    listener = consumer._listener
    assert listener is not None
    deadline = time.monotonic() + 5
    while not readable(listener) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # both notifications are in


def test_a_take_of_fewer_records_than_announced_leaves_the_next_wait_woken(
        pg_url: str, pg_schema: str) -> None:
    """A take reads the notifications waiting on the listener; those for its own queue
    were dropped, as if the take saw their records. A take of fewer records than are
    ready leaves some: the next wait then slept the whole long poll (5 s in the queues)
    while records were ready, until another put happened to notify."""
    consumer = PostgresEngine(pg_url, schema=pg_schema)
    producer = PostgresEngine(pg_url, schema=pg_schema, pool_size=2)
    try:
        _two_puts_heard(consumer, producer)
        assert [r.data for r in consumer.take("q", 1, time.time(), None)] == [b"a"]
        started = time.monotonic()
        assert consumer.wait_ready("q", 3.0)
        assert time.monotonic() - started < 1.0
        assert [r.data for r in consumer.take("q", 1, time.time(), None)] == [b"b"]
    finally:
        producer.close()
        consumer.close()


def test_a_take_of_every_ready_record_still_drops_their_notifications(
        pg_url: str, pg_schema: str) -> None:
    """The other side: a take that found fewer records than it asked for saw every
    record the notifications it read announce, and the next wait does not wake for them."""
    consumer = PostgresEngine(pg_url, schema=pg_schema)
    producer = PostgresEngine(pg_url, schema=pg_schema, pool_size=2)
    try:
        _two_puts_heard(consumer, producer)
        assert [r.data for r in consumer.take("q", 5, time.time(), None)] == [b"a", b"b"]
        assert not consumer.wait_ready("q", 0.5)
    finally:
        producer.close()
        consumer.close()


def test_a_schema_holding_a_type_named_like_a_table_is_a_format_error(
        pg_url: str, pg_schema: str) -> None:
    """A composite type takes a table's name in its schema: the schema is someone's,
    as one holding a view is, and the open says so instead of failing its CREATE TABLE."""
    pg_support.execute(pg_url, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(pg_schema)))
    pg_support.execute(pg_url, sql.SQL("CREATE TYPE {}.records AS (a integer)").format(
        sql.Identifier(pg_schema)))
    with pytest.raises(FormatError, match="not a spoolq queue"):
        PostgresEngine(pg_url, schema=pg_schema)
