"""The postgres engine: a schema changed under an open queue, and records given back at
once by a release at a time of 0 or less."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import pytest

pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

from psycopg import sql

import spoolq
from spoolq.engines import Lease
from spoolq.engines.postgres import PostgresEngine

from .pg_support import execute

# The engine looks at the schema's version again once this many seconds passed.
_RECHECK = 1.0


@pytest.fixture
def queue(pg_url: str, pg_schema: str) -> Iterator[spoolq.SyncQueue]:
    with spoolq.SyncQueue.create(pg_url, name="jobs",
                                 engine_options={"schema": pg_schema}) as q:
        q.put(b"first")
        yield q


def _calls(q: spoolq.SyncQueue) -> list[Callable[[], object]]:
    return [lambda: q.put(b"more"), lambda: q.get(timeout=0), q.peek]


def _set_version(url: str, schema: str, version: bytes) -> None:
    execute(url, sql.SQL("UPDATE {}.meta SET value = %s WHERE key IN "
                         "('format_version', 'schema_version')").format(sql.Identifier(schema)),
            version)


def test_a_dropped_schema_fails_every_call_naming_it(
        pg_url: str, pg_schema: str, queue: spoolq.SyncQueue) -> None:
    execute(pg_url, sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(pg_schema)))
    for call in _calls(queue):
        with pytest.raises(spoolq.FormatError, match=pg_schema):
            call()


def test_a_schema_upgraded_under_an_open_queue_is_refused(
        pg_url: str, pg_schema: str, queue: spoolq.SyncQueue) -> None:
    """Another spoolq recorded another format version: this queue stops reading and
    writing the tables within a second, instead of going on in a layout it does not know."""
    _set_version(pg_url, pg_schema, b"2")
    time.sleep(_RECHECK + 0.2)
    for call in _calls(queue):
        with pytest.raises(spoolq.FormatError, match=f"{pg_schema}.*format version 2"):
            call()


def test_a_schema_dropped_and_created_again_is_refused(
        pg_url: str, pg_schema: str, queue: spoolq.SyncQueue) -> None:
    """The tables are new ones, empty, of a newer format: the queue says its tables are
    gone instead of reading an empty queue or writing into them."""
    execute(pg_url, sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(pg_schema)))
    PostgresEngine(pg_url, schema=pg_schema).close()
    time.sleep(_RECHECK + 0.2)
    for call in _calls(queue):
        with pytest.raises(spoolq.FormatError, match=f"{pg_schema}.*created again"):
            call()
    # The tables of the newer schema were left alone.
    eng = PostgresEngine(pg_url, schema=pg_schema)
    try:
        assert eng.counts("jobs")[:2] == (0, 0)
        assert eng.get_meta("format_version") == b"1"
    finally:
        eng.close()


def test_a_queue_opened_again_works_on_the_new_schema(
        pg_url: str, pg_schema: str, queue: spoolq.SyncQueue) -> None:
    execute(pg_url, sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(pg_schema)))
    with spoolq.SyncQueue.create(pg_url, name="jobs",
                                 engine_options={"schema": pg_schema}) as again:
        again.put(b"new")
        assert again.get(timeout=0) == b"new"


# ---- a release at a time of 0 or less --------------------------------------------------
# As in the other engines, a record released with not_before 0 or less is given back at
# once: a take at any time sees it, one at a negative time or -inf too, like a record put
# or given back by an expired lease. The engine stored such a time as given, a time in
# 1970 on the database clock, which a take before it did not see.


@pytest.mark.parametrize("not_before", [0.0, -5.0, -math.inf])
def test_records_given_back_at_once_are_seen_at_a_time_before_zero(
        pg_url: str, pg_schema: str, not_before: float) -> None:
    eng = PostgresEngine(pg_url, schema=pg_schema)
    try:
        eng.append("q", [b"a", b"b", b"c"], [1, 1, 1], 5.0)
        a, _, _ = eng.take("q", 3, 5.0, Lease("me", 10.0))
        eng.release("q", [(a.id, 1)], "me", not_before=not_before, max_attempts=None)
        assert eng.expire("q", 20.0, owners=["me"]) == 2
        got = eng.take("q", 5, -10.0, None)
        assert [(r.data, r.attempts) for r in got] == [(b"a", 1), (b"b", 1), (b"c", 1)]
    finally:
        eng.close()


def test_a_record_released_until_later_stays_hidden_before_zero(
        pg_url: str, pg_schema: str) -> None:
    eng = PostgresEngine(pg_url, schema=pg_schema)
    try:
        eng.append("q", [b"a", b"b"], [1, 1], 5.0)
        a, _ = eng.take("q", 2, 5.0, Lease("me", 10.0))
        eng.release("q", [(a.id, 1)], "me", not_before=7.0, max_attempts=None)
        for now in (-math.inf, -1.0, 0.0, 6.9):
            assert eng.take("q", 5, now, None) == []
        assert [r.data for r in eng.take("q", 5, 8.0, None)] == [b"a"]
    finally:
        eng.close()
