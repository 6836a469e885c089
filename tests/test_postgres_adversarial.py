"""The postgres engine against the settings, inputs and failures a user's database
and code bring: a server whose sessions default to another isolation level, values of
the wrong type, connections lost at the wrong moment."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from spoolq.engines.postgres import PostgresEngine


def _wait_for_lock_wait(url: str, schema: str) -> None:
    """Wait until a statement on ``schema`` waits for a lock."""
    deadline = time.monotonic() + 10
    with psycopg.connect(url, autocommit=True) as conn:
        while not conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND position(%s in query) > 0", (schema,)).fetchone():
            assert time.monotonic() < deadline, "the statement never waited for a lock"
            time.sleep(0.02)


# ---- sessions that default to another isolation level -----------------------------------
# A database or role may default every transaction to repeatable read or serializable
# (ALTER DATABASE ... SET default_transaction_isolation). The engine's statements are
# written for read committed: a counter stripe or a record that another transaction
# changed meanwhile is read again after its lock is granted. At the stricter levels the
# statement failed instead ("could not serialize access due to concurrent update"), so
# producers and consumers sharing a queue saw their puts and takes fail at random.


@pytest.mark.parametrize("level", ["repeatable read", "serializable"])
def test_a_put_waiting_for_a_counter_stripe_goes_through_at_any_default_isolation(
        pg_url: str, pg_schema: str, level: str) -> None:
    # libpq splits options at spaces, unless escaped with a backslash
    url = make_conninfo(pg_url, options="-c default_transaction_isolation="
                        + level.replace(" ", "\\ "))
    engine = PostgresEngine(url, schema=pg_schema, counter_slots=1)
    try:
        engine.append("q", [b"first"], [5], time.time())
        errors: list[BaseException] = []

        def put() -> None:
            try:
                engine.append("q", [b"second"], [6], time.time())
            except BaseException as exc:
                errors.append(exc)

        with psycopg.connect(pg_url) as other:  # holds the stripe, then changes it
            other.execute(sql.SQL("UPDATE {}.counts SET ready = ready WHERE queue = 'q'")
                          .format(sql.Identifier(pg_schema)))
            putter = threading.Thread(target=put)
            putter.start()
            _wait_for_lock_wait(pg_url, pg_schema)
        putter.join(10)
        assert errors == []
        assert engine.counts("q")[:2] == (2, 0)
        assert [r.data for r in engine.take("q", 5, time.time(), None)] == [b"first",
                                                                            b"second"]
    finally:
        engine.close()
