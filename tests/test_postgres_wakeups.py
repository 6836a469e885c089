"""Wake-ups of one PostgreSQL engine waiting on several queues from several threads: a
notification that a wait for one queue reads must still wake the waits for the queue
it names that start after, as a notification nobody read does."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

from spoolq.engines.base import WaitCancel
from spoolq.engines.postgres import PostgresEngine

from . import pg_support

engine = pg_support.engine  # the fixture: an engine on the test's own schema

_HEARD = 0.5  # seconds for the listening thread to read a notification sent now


@pytest.fixture
def producer(pg_url: str, pg_schema: str, engine: PostgresEngine) -> Iterator[PostgresEngine]:
    """Another engine on the same schema (as another process would be) that puts."""
    eng = PostgresEngine(pg_url, schema=pg_schema)
    try:
        yield eng
    finally:
        eng.close()


class _BusyListener:
    """A thread of ``eng`` waiting for queue ``Y`` again and again, so that it holds
    the listening connection and reads every notification, whichever queue it names."""

    def __init__(self, eng: PostgresEngine) -> None:
        assert eng.wait_ready("Y", 0.5)  # the first wait starts listening
        self._eng = eng
        self._stop = WaitCancel()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(0.2)  # its wait holds the listener now

    def _run(self) -> None:
        while not self._stop.cancelled:
            self._eng.wait_ready("Y", 30.0, self._stop)

    def stop(self) -> None:
        self._stop.cancel()
        self._thread.join(5)
        assert not self._thread.is_alive()


def _put(eng: PostgresEngine, queue: str, n: int = 1) -> None:
    eng.append(queue, [b"item"] * n, [4] * n, time.time())


def _timed_wait(eng: PostgresEngine, queue: str, timeout: float = 3.0) -> tuple[bool, float]:
    started = time.monotonic()
    ready = eng.wait_ready(queue, timeout)
    return ready, time.monotonic() - started


def test_wait_after_an_empty_take_hears_a_put_read_by_the_wait_for_another_queue(
        engine: PostgresEngine, producer: PostgresEngine) -> None:
    busy = _BusyListener(engine)
    try:
        assert engine.take("X", 1, time.time(), None) == []
        _put(producer, "X")
        time.sleep(_HEARD)  # the wait for Y has read the notification for X
        ready, took = _timed_wait(engine, "X")
        assert ready and took < 1.0, (ready, took)
        assert len(engine.take("X", 1, time.time(), None)) == 1
    finally:
        busy.stop()


def test_a_wait_starting_after_a_put_read_by_another_queue_wait_is_woken(
        engine: PostgresEngine, producer: PostgresEngine) -> None:
    # No take first: as a notification read while no thread waits for its queue, it
    # wakes the next wait for that queue, in whichever thread.
    busy = _BusyListener(engine)
    try:
        _put(producer, "X")
        time.sleep(_HEARD)
        result: list[tuple[bool, float]] = []
        waiter = threading.Thread(target=lambda: result.append(_timed_wait(engine, "X")))
        waiter.start()
        waiter.join(10)
        ready, took = result[0]
        assert ready and took < 1.0, (ready, took)
    finally:
        busy.stop()


def test_a_consumer_between_take_and_wait_is_woken_by_a_put_another_consumer_heard(
        engine: PostgresEngine, producer: PostgresEngine) -> None:
    # Two consumers of X: one already waits, the other's take found nothing just before
    # the put of two items; the notification wakes the first, and must wake the second.
    busy = _BusyListener(engine)
    first: list[tuple[bool, float]] = []
    waiter = threading.Thread(target=lambda: first.append(_timed_wait(engine, "X", 10.0)))
    try:
        waiter.start()
        time.sleep(0.2)
        assert engine.take("X", 1, time.time(), None) == []
        _put(producer, "X", 2)
        waiter.join(10)
        assert first and first[0][0] and first[0][1] < 1.0, first
        ready, took = _timed_wait(engine, "X")
        assert ready and took < 1.0, (ready, took)
    finally:
        busy.stop()


def test_waits_without_new_puts_still_sleep(engine: PostgresEngine,
                                             producer: PostgresEngine) -> None:
    # A notification wakes the waits it is meant for, not every later one: after a
    # consumer looked, its next wait sleeps until something new is put.
    busy = _BusyListener(engine)
    try:
        _put(producer, "X")
        time.sleep(_HEARD)
        assert len(engine.take("X", 5, time.time(), None)) == 1
        ready, took = _timed_wait(engine, "X", 1.0)
        assert not ready and took >= 0.9, (ready, took)
        ready, took = _timed_wait(engine, "X", 1.0)  # still nothing new
        assert not ready, (ready, took)
    finally:
        busy.stop()
