"""The postgres engine: a schema dropped under an open queue, and records given back at
once by a release at a time of 0 or less."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest

pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

from psycopg import sql

import spoolq
from spoolq.engines import Lease
from spoolq.engines.postgres import PostgresEngine

from .pg_support import execute


@pytest.fixture
def queue(pg_url: str, pg_schema: str) -> Iterator[spoolq.SyncQueue]:
    with spoolq.SyncQueue.create(pg_url, name="jobs",
                                 engine_options={"schema": pg_schema}) as q:
        q.put(b"first")
        yield q


def _calls(q: spoolq.SyncQueue) -> list[Callable[[], object]]:
    return [lambda: q.put(b"more"), lambda: q.get(timeout=0), q.peek]


def test_a_dropped_schema_fails_every_call_naming_it(
        pg_url: str, pg_schema: str, queue: spoolq.SyncQueue) -> None:
    execute(pg_url, sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(pg_schema)))
    for call in _calls(queue):
        with pytest.raises(spoolq.FormatError, match=pg_schema):
            call()


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
