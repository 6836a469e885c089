"""The postgres engine: wake-ups shared by waiting threads, and the edges of its input
and of its schema."""

from __future__ import annotations

import os
import random
import string
import threading
import time
from typing import Any

import pytest

import spoolq

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

import psycopg
from psycopg import sql

from spoolq.engines import Lease
from spoolq.engines import _pgparts as pgparts
from spoolq.engines import postgres as pg
from spoolq.engines.base import dead_queue_name
from spoolq.engines.postgres import PostgresEngine

from . import pg_support
from .pg_support import execute as _execute
from .waiting import assert_cancel_ends_a_wait, assert_one_wait_is_cancelled_alone

engine = pg_support.engine  # the fixture: an engine on the test's own schema


def _waiters(engine: PostgresEngine, queues: list[str], timeout: float
             ) -> tuple[list[threading.Thread], dict[int, tuple[bool, float]]]:
    """Start one thread per queue in ``engine.wait_ready``; the dict gets each one's
    answer and how long it took, by index."""
    results: dict[int, tuple[bool, float]] = {}

    def wait(k: int, queue: str) -> None:
        start = time.monotonic()
        results[k] = (engine.wait_ready(queue, timeout), time.monotonic() - start)

    threads = [threading.Thread(target=wait, args=(k, q)) for k, q in enumerate(queues)]
    for thread in threads:
        thread.start()
    return threads, results


def test_one_notification_wakes_every_thread_waiting_for_its_queue(
        engine: PostgresEngine, pg_url: str, pg_schema: str) -> None:
    assert engine.wait_ready("q", 0) is True  # the first wait starts listening
    threads, results = _waiters(engine, ["q", "q", "q"], 5)
    time.sleep(0.3)  # one thread listens, the others wait for their turn
    producer = PostgresEngine(pg_url, schema=pg_schema)
    try:
        producer.append("q", [b"a", b"b", b"c"], [1, 1, 1], 1.0)
    finally:
        producer.close()
    for thread in threads:
        thread.join(10)
    assert [results[k][0] for k in range(3)] == [True, True, True]
    assert max(took for _ready, took in results.values()) < 2.0


def test_a_notification_for_another_queue_reaches_the_thread_waiting_for_it(
        engine: PostgresEngine, pg_url: str, pg_schema: str) -> None:
    assert engine.wait_ready("a", 0) is True
    threads, results = _waiters(engine, ["a", "b"], 5)
    time.sleep(0.3)
    producer = PostgresEngine(pg_url, schema=pg_schema)
    try:
        with producer._tx("test") as conn:  # both notifications arrive in one packet
            conn.execute("SELECT pg_notify(%s, 'a'), pg_notify(%s, 'b')",
                         (engine.channel, engine.channel))
    finally:
        producer.close()
    for thread in threads:
        thread.join(10)
    assert results[0][0] is True and results[1][0] is True
    assert max(took for _ready, took in results.values()) < 2.0


# ---- large batches ------------------------------------------------------------------------

@pytest.mark.slow
def test_a_batch_larger_than_a_message_is_stored_whole(engine: PostgresEngine) -> None:
    """PostgreSQL takes messages of at most 1 GiB: a batch past that, each of its records
    well below, made the server close the connection and stored nothing."""
    chunk = b"\1" * (520 << 20)
    ids = engine.append("q", [chunk, chunk], [1, 2], time.time())
    assert len(ids) == 2 and ids == sorted(ids)
    assert engine.counts("q") == (2, 0, 2 * len(chunk), 3)
    assert [r.id for r in engine.peek("q", 2)] == ids


def test_a_record_larger_than_postgresql_stores_is_refused_before_sending(
        engine: PostgresEngine) -> None:
    engine.append("q", [b"a"], [1], 1.0)
    huge = bytes(1 << 30)  # sent, it made the server close the connection
    assert len(huge) > pg.MAX_RECORD_BYTES
    start = time.monotonic()
    with pytest.raises(ValueError, match=f"record of {len(huge)} bytes.*nothing was stored"):
        engine.append("q", [b"b", huge], [1, len(huge)], 1.0)
    assert time.monotonic() - start < 0.5  # refused, not sent
    assert engine.counts("q") == (1, 0, 1, 1)
    (taken,) = engine.take("q", 1, time.time(), None)
    big = taken._replace(id=taken.id - 1, data=huge)
    with pytest.raises(ValueError, match="nothing was stored"):
        engine.restore("q", [big, taken])
    assert engine.counts("q") == (0, 0, 0, 0)


def test_a_batch_sent_in_several_statements_is_one_transaction(
        engine: PostgresEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgparts, "STATEMENT_BYTES", 2)  # one statement per record or two
    ids = engine.append("q", [b"a", b"b", b"c", b"d", b"e"], [1, 2, 3, 4, 5], 1.0)
    assert [r.data for r in engine.peek("q", 10)] == [b"a", b"b", b"c", b"d", b"e"]
    assert engine.counts("q") == (5, 0, 5, 15)
    taken = engine.take("q", 3, time.time(), None)
    assert [r.id for r in taken] == ids[:3]
    # The last record collides with one the queue holds: the first statements of the
    # batch, which went through, are rolled back with it.
    clash = taken[2]._replace(id=ids[3])
    with pytest.raises(ValueError, match="nothing was restored"):
        engine.restore("q", [taken[0], taken[1], clash])
    assert [r.id for r in engine.peek("q", 10)] == ids[3:]
    assert engine.counts("q") == (2, 0, 2, 9)
    engine.restore("q", taken)
    assert [r.id for r in engine.peek("q", 10)] == ids
    assert engine.counts("q") == (5, 0, 5, 15)


# ---- damaged schemas ----------------------------------------------------------------------

@pytest.mark.parametrize(("damage", "named"), [
    ("ALTER TABLE {}.records DROP COLUMN reason", "records.reason text"),
    ("ALTER TABLE {}.records ALTER COLUMN attempts TYPE bigint", "records.attempts integer"),
    ("DROP TABLE {0}.counts; CREATE TABLE {0}.counts (queue text, n bigint)",
     "counts.leased bigint"),
])
def test_a_queue_whose_tables_lost_a_column_is_refused_at_open(
        engine: PostgresEngine, pg_url: str, pg_schema: str, damage: str, named: str) -> None:
    engine.append("q", [b"x"], [1], 1.0)
    for statement in damage.split("; "):
        _execute(pg_url, sql.SQL(statement).format(sql.Identifier(pg_schema)))
    with pytest.raises(spoolq.FormatError, match=f"damaged: no column .*{named}"):
        PostgresEngine(pg_url, schema=pg_schema)


# ---- settling -----------------------------------------------------------------------------

@pytest.mark.parametrize("max_attempts", [None, 1])
def test_a_release_naming_a_delivery_twice_releases_it_once(
        engine: PostgresEngine, max_attempts: int | None) -> None:
    engine.append("q", [b"a", b"b"], [1, 1], 1.0)
    first, _second = engine.take("q", 2, time.time(), Lease("me", time.time() + 60))
    delivery = (first.id, first.attempts)
    assert engine.release("q", [delivery, delivery], "me", not_before=0.0,
                          max_attempts=max_attempts) == [first.id]
    dead = 0 if max_attempts is None else 1
    assert engine.counts("q") == (1 - dead, 1, 2 - dead, 2 - dead)
    assert engine.counts("q.dead") == (dead, 0, dead, dead)
    assert len(engine.peek("q.dead", 10)) == dead
    assert len(engine.peek("q", 10)) == 1 - dead


def test_a_take_of_no_records_or_fewer_takes_nothing(engine: PostgresEngine) -> None:
    engine.append("q", [b"a"], [1], 1.0)
    for n in (0, -1):
        assert engine.take("q", n, time.time(), None) == []
        assert engine.take("q", n, time.time(), Lease("me", time.time() + 60)) == []
    assert engine.counts("q") == (1, 0, 1, 1)


# ---- waiting without notifications --------------------------------------------------------

def test_a_wait_without_notifications_sees_records_within_a_poll(
        pg_url: str, pg_schema: str) -> None:
    """With notify=False nothing is heard: a wait used to sleep out its whole timeout (a
    get waited 5 seconds for an item put meanwhile)."""
    quiet = PostgresEngine(pg_url, schema=pg_schema, notify=False)
    producer = PostgresEngine(pg_url, schema=pg_schema, notify=False)
    try:
        assert quiet.wait_ready("q", 0.2) is False  # nothing ready: nothing to say
        threads, results = _waiters(quiet, ["q"], 5)
        time.sleep(0.2)
        producer.append("q", [b"x"], [1], 1.0)
        threads[0].join(10)
        ready, took = results[0]
        assert ready is True and took < 1.0
        assert quiet._listener is None, "nothing to listen to without notifications"
        assert_cancel_ends_a_wait(quiet, "other", within=0.5)
        assert_one_wait_is_cancelled_alone(quiet, "another", within=0.5)
    finally:
        producer.close()
        quiet.close()


def test_a_get_without_notifications_wakes_within_a_poll(pg_url: str, pg_schema: str) -> None:
    opts = {"schema": pg_schema, "notify": False}
    with spoolq.SyncQueue.create(pg_url, name="jobs", engine_options=opts) as q, \
            spoolq.SyncQueue.create(pg_url, name="jobs", engine_options=opts) as producer:
        got: list[tuple[object, float]] = []
        getter = threading.Thread(target=lambda: got.append((q.get(timeout=10),
                                                            time.monotonic())))
        getter.start()
        time.sleep(0.3)
        put_at = time.monotonic()
        producer.put(1)
        getter.join(10)
        assert got[0][0] == 1 and got[0][1] - put_at < 1.0


def test_a_thread_waiting_its_turn_wakes_when_another_hears_its_queue(
        engine: PostgresEngine, pg_url: str, pg_schema: str) -> None:
    assert engine.wait_ready("a", 0) is True
    listening, results = _waiters(engine, ["a"], 2)
    time.sleep(0.2)  # "a" holds the listener
    turn, more = _waiters(engine, ["b"], 5)
    time.sleep(0.2)
    producer = PostgresEngine(pg_url, schema=pg_schema)
    try:
        producer.append("b", [b"x"], [1], 1.0)
    finally:
        producer.close()
    turn[0].join(10)
    listening[0].join(10)
    assert more[0][0] is True and more[0][1] < 1.0, "woken only when the listener let go"
    assert results[0][0] is False


def test_every_waiting_thread_looks_again_after_the_listener_was_lost(
        engine: PostgresEngine, pg_url: str) -> None:
    assert engine.wait_ready("q", 0) is True
    threads, results = _waiters(engine, ["q", "q"], 3)
    time.sleep(0.3)  # one listens, the other waits its turn
    with psycopg.connect(pg_url, autocommit=True) as admin:
        assert engine._listener is not None
        admin.execute("SELECT pg_terminate_backend(%s)", (engine._listener.info.backend_pid,))
    for thread in threads:
        thread.join(10)
    # Notifications to either may have been missed while no session listened.
    assert [results[k][0] for k in range(2)] == [True, True]
    assert max(took for _ready, took in results.values()) < 1.5


# ---- closing ------------------------------------------------------------------------------

def test_a_wait_starting_while_close_runs_leaves_no_listener_open(
        pg_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread's first wait_ready landing just after close() shut the listener
    down used to open a new listening connection that nothing closed."""
    eng = PostgresEngine(pg_url, schema=pg_schema)
    stop_listening = eng._waits.close
    outcome: list[object] = []

    def close_then_wait() -> None:
        stop_listening()
        try:  # what a wait_ready of another thread may do at this very moment
            outcome.append(eng.wait_ready("q", 0))
        except spoolq.EngineError as exc:
            outcome.append(exc)

    monkeypatch.setattr(eng._waits, "close", close_then_wait)
    eng.close()
    leaked = eng._listener
    if leaked is not None:
        leaked.close()
    assert leaked is None, f"a listener outlived close (the wait said {outcome})"
    assert isinstance(outcome[0], spoolq.EngineError) and "closed" in str(outcome[0])


# ---- moving -------------------------------------------------------------------------------

def test_a_move_of_a_queue_to_itself_moves_its_records_to_the_tail(
        engine: PostgresEngine) -> None:
    """As on every engine; it used to fail with an error about ON CONFLICT, since the
    counts of the source and of the destination were one row changed twice."""
    ids = engine.append("q", [b"a", b"b"], [1, 2], 1.0)
    (late,) = engine.append("q", [b"c"], [3], 1.0)
    assert engine.move("q", "q", ids) == 2
    after = engine.peek("q", 10)
    assert [r.data for r in after] == [b"c", b"a", b"b"]
    assert after[0].id == late and min(r.id for r in after[1:]) > late
    assert engine.counts("q") == (3, 0, 3, 6)


@pytest.mark.parametrize("durability", ["commit", "buffer"])
def test_a_record_too_large_is_refused_at_its_put_and_loses_nothing(
        pg_url: str, pg_schema: str, durability: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With "buffer" the record used to wait in the buffer and fail every write of it and
    of the items put around it, which were lost at close."""
    monkeypatch.setattr(pgparts, "MAX_RECORD_BYTES", 1000)  # not 1 GiB of test data
    opts: dict[str, Any] = {"engine_options": {"schema": pg_schema}}
    with spoolq.SyncQueue.create(pg_url, durability=durability, **opts) as q:
        q.put("before")
        with pytest.raises(ValueError, match="nothing was stored"):
            q.put(os.urandom(2000))
        q.put("after")
    with spoolq.SyncQueue.create(pg_url, **opts) as q:
        assert q.get_many(10, timeout=0.2) == ["before", "after"]


def _name(size: int) -> str:
    """A queue name of ``size`` bytes that PostgreSQL cannot compress in its index."""
    return "".join(random.Random(size).choices(string.ascii_letters + string.digits, k=size))


def test_the_longest_queue_name_reaches_its_dead_letters(engine: PostgresEngine) -> None:
    queue = _name(pg.MAX_QUEUE_NAME_BYTES)
    engine.append(queue, [b"a", b"b"], [1, 1], time.time())
    (rec,) = engine.take(queue, 1, time.time(), Lease("me", time.time() + 60))
    assert engine.release(queue, [(rec.id, rec.attempts)], "me", not_before=0.0,
                          max_attempts=1, reason="gave up") == [rec.id]
    dead = dead_queue_name(queue)
    assert [r.data for r in engine.peek(dead, 10)] == [b"a"]
    assert engine.move(dead, queue) == 1
    taken = engine.take(queue, 2, time.time(), None)
    assert [r.data for r in taken] == [b"b", b"a"]
    engine.restore(dead, taken[1:])  # as a copy of a file's dead letters does
    assert engine.counts(dead).ready == 1


@pytest.mark.parametrize("size", [pg.MAX_QUEUE_NAME_BYTES + 1, 2680, 2700, 10_000])
def test_a_longer_queue_name_is_refused_before_anything_is_stored(
        engine: PostgresEngine, size: int) -> None:
    queue = _name(size)
    with pytest.raises(ValueError, match=f"queue name of {size} bytes.* at most 2048 bytes"):
        engine.append(queue, [b"a"], [1], time.time())
    engine.append("q", [b"a"], [1], time.time())
    (rec,) = engine.take("q", 1, time.time(), None)
    for name in (queue, dead_queue_name(queue)):
        with pytest.raises(ValueError, match="at most 2048 bytes"):
            engine.restore(name, [rec])
        engine.restore("q", [rec])
        with pytest.raises(ValueError, match="at most 2048 bytes"):
            engine.move("q", name)
        rec, = engine.take("q", 1, time.time(), None)
    assert engine.queues() == ["q"]
