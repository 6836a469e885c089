"""A PostgreSQL engine that waited once and then makes no calls must not stay a listener
that never reads: its backend would block writing notifications to it, and the server's
notification queue, shared by every database and application, could never shrink past
them (until every NOTIFY on the server fails). Waits still hear what was put between
them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

import psycopg

from spoolq.engines.base import Lease
from spoolq.engines.postgres import PostgresEngine

from . import pg_support

engine = pg_support.engine  # the fixture: an engine on the test's own schema

_ROUNDS = 40  # transactions of notifications, 200 of some 8 kB each: 64 MB at most


@pytest.fixture
def producer(pg_url: str, pg_schema: str, engine: PostgresEngine) -> Iterator[PostgresEngine]:
    """Another engine on the same schema (as another process would be) that puts."""
    eng = PostgresEngine(pg_url, schema=pg_schema)
    try:
        yield eng
    finally:
        eng.close()


def _backend_wait(conn: psycopg.Connection, pid: int) -> tuple[str | None, str | None]:
    row = conn.execute("SELECT wait_event_type, wait_event FROM pg_stat_activity "
                       "WHERE pid = %s", (pid,)).fetchone()
    return (None, None) if row is None else (row[0], row[1])


def test_an_idle_engine_after_a_wait_does_not_block_its_backend(
        engine: PostgresEngine, pg_url: str) -> None:
    assert engine.wait_ready("q", 0.2)  # the first wait starts listening
    assert not engine.wait_ready("q", 0.2)  # nothing put: a wait that ends empty
    listener = engine._listener
    if listener is None:
        return  # no connection left behind at all
    pid = listener.info.backend_pid
    # Other processes keep putting (notifications as large as a payload may be, so that
    # a few megabytes fill the sockets quickly) while the engine makes no call.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for _ in range(_ROUNDS):
            with conn.transaction():
                conn.execute("SELECT pg_notify(%s, g::text || repeat('x', 7900)) "
                             "FROM generate_series(1, 200) g", (engine.channel,))
            assert _backend_wait(conn, pid) != ("Client", "ClientWrite"), (
                "the idle engine's listening backend is blocked writing notifications")
        # The backend has had the time to deliver the last transaction's notifications.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert _backend_wait(conn, pid) != ("Client", "ClientWrite")
            time.sleep(0.1)


def test_a_wait_hears_a_put_made_between_waits(engine: PostgresEngine,
                                                producer: PostgresEngine) -> None:
    assert engine.wait_ready("q", 0.2)
    assert engine.take("q", 1, time.time(), None) == []
    assert not engine.wait_ready("q", 0.3)
    producer.append("q", [b"item"], [4], time.time())  # no wait in progress
    started = time.monotonic()
    assert engine.wait_ready("q", 5.0)
    assert time.monotonic() - started < 1.0
    assert len(engine.take("q", 5, time.time(), None)) == 1
    # Looked at everything: the next wait sleeps until something new is put, and a
    # put during it wakes it.
    ready_at = time.monotonic()
    assert not engine.wait_ready("q", 0.5)
    assert time.monotonic() - ready_at >= 0.45
    producer.append("q", [b"later"], [5], time.time())
    assert engine.wait_ready("q", 5.0)
    assert len(engine.take("q", 5, time.time(), None)) == 1


def test_a_record_released_with_a_delay_does_not_wake_every_wait(
        engine: PostgresEngine, producer: PostgresEngine) -> None:
    # Ready but not visible for a minute: waits between now and then sleep their time
    # out rather than return at once again and again.
    assert engine.wait_ready("q", 0.2)
    producer.append("q", [b"later"], [5], time.time())
    taken = producer.take("q", 1, time.time(), Lease("w", time.time() + 60))
    assert len(taken) == 1
    assert engine.take("q", 1, time.time(), None) == []
    assert not engine.wait_ready("q", 0.2)
    producer.release("q", [(taken[0].id, taken[0].attempts)], "w",
                     not_before=time.time() + 60, max_attempts=None)
    engine.wait_ready("q", 1.0)  # the release notifies: may wake once
    assert engine.take("q", 1, time.time(), None) == []
    for _ in range(3):
        started = time.monotonic()
        assert not engine.wait_ready("q", 0.3)
        assert time.monotonic() - started >= 0.25
