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

from . import pg_support

engine = pg_support.engine  # the fixture: an engine on the test's own schema


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


# ---- values of the wrong type -------------------------------------------------------------
# As the other engines do, the engine refuses a queue name that is not a str and records
# that are not bytes-like before anything is sent. PostgreSQL cast a str record to bytea
# by reading its backslashes as escapes ("\\x41" was stored as b"A"), kept a bytes queue
# name or reason as the text of its hex escape ("\\x71"), and a bytes name failed with an
# AttributeError of the engine's own code.


def _nothing_stored(engine: PostgresEngine) -> bool:
    return engine.queues() == [] and engine.counts("q") == (0, 0, 0, 0)


def test_an_append_of_a_str_record_or_a_name_not_a_str_is_refused(
        engine: PostgresEngine) -> None:
    with pytest.raises(TypeError, match="a record must be bytes, not str"):
        engine.append("q", [b"fine", "\\x41"], [4, 4], time.time())
    for name in (b"q", 7):
        with pytest.raises(TypeError, match="queue name must be a str"):
            engine.append(name, [b"a"], [1], time.time())  # type: ignore[arg-type]
    assert _nothing_stored(engine)
    engine.append("q", [bytearray(b"ba"), memoryview(b"mv")], [2, 2], time.time())
    assert [r.data for r in engine.take("q", 5, time.time(), None)] == [b"ba", b"mv"]


def test_a_restore_of_fields_of_the_wrong_type_is_refused(engine: PostgresEngine) -> None:
    engine.append("q", [b"a"], [1], time.time())
    (rec,) = engine.take("q", 1, time.time(), None)
    with pytest.raises(TypeError, match="a record must be bytes, not str"):
        engine.restore("q", [rec._replace(data="\\x41")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a reason must be a str"):
        engine.restore("q", [rec._replace(reason=b"why")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="queue name must be a str"):
        engine.restore(b"q", [rec])  # type: ignore[arg-type]
    assert engine.counts("q") == (0, 0, 0, 0)
    engine.restore("q", [rec])
    assert engine.peek("q", 5) == [rec]


def test_a_move_to_a_name_not_a_str_is_refused(engine: PostgresEngine) -> None:
    engine.append("q", [b"a"], [1], time.time())
    with pytest.raises(TypeError, match="queue name must be a str"):
        engine.move("q", b"x")  # type: ignore[arg-type]
    assert engine.queues() == ["q"] and engine.counts("q")[0] == 1


def test_metadata_of_the_wrong_type_is_refused(engine: PostgresEngine) -> None:
    with pytest.raises(TypeError, match="a metadata value must be bytes"):
        engine.set_meta("k", "\\x41")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a metadata key must be a str"):
        engine.set_meta(b"k", b"v")  # type: ignore[arg-type]
    assert engine.get_meta("k") is None


# ---- search_path ----------------------------------------------------------------------------
# Every table the engine reads is named with its schema, but functions, operators and types
# (length, unnest, count, bytea...) are found along the search_path. A database, role or URL
# setting a search_path that lists a schema before pg_catalog let that schema's functions
# of the same names run in the engine's statements in place of PostgreSQL's own: here a
# length() of an application's schema made the counts of stored bytes wrong.


def test_functions_of_a_schema_ahead_of_pg_catalog_in_the_search_path_are_not_used(
        pg_url: str, pg_schema: str) -> None:
    other = f"{pg_schema}_app"
    pg_support.execute(pg_url, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other)))
    try:
        pg_support.execute(pg_url, sql.SQL(
            "CREATE FUNCTION {}.length(bytea) RETURNS integer LANGUAGE sql "
            "AS 'SELECT 1000'").format(sql.Identifier(other)))
        url = make_conninfo(pg_url, options=f"-c search_path={other},pg_catalog")
        engine = PostgresEngine(url, schema=pg_schema)
        try:
            engine.append("q", [b"ab", b"cde"], [2, 3], time.time())
            assert engine.counts("q") == (2, 0, 5, 5)
            engine.take("q", 1, time.time(), None)
            assert engine.counts("q") == (1, 0, 3, 3)
        finally:
            engine.close()
    finally:
        pg_support.execute(pg_url, sql.SQL("DROP SCHEMA {} CASCADE").format(
            sql.Identifier(other)))
