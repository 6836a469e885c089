"""Waits of several threads on one PostgreSQL engine, whose listening connection listens
only while a wait is in progress: a put made while no one listened must wake a wait that
starts later, whichever thread it runs on, also when another thread's wait on another
queue started listening meanwhile (an async queue takes on its worker thread and waits
on a thread of a pool, which never took from the queue)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

from spoolq.engines.postgres import PostgresEngine

from . import pg_support

engine = pg_support.engine  # the fixture: an engine on the test's own schema


@pytest.fixture
def producer(pg_url: str, pg_schema: str, engine: PostgresEngine) -> Iterator[PostgresEngine]:
    """Another engine on the same schema (as another process would be) that puts."""
    eng = PostgresEngine(pg_url, schema=pg_schema)
    try:
        yield eng
    finally:
        eng.close()


def _in_thread(engine: PostgresEngine, queue: str, timeout: float) -> tuple[bool, float]:
    """wait_ready on a thread of its own (one that never looked at ``queue``)."""
    out: list[tuple[bool, float]] = []

    def run() -> None:
        started = time.monotonic()
        out.append((engine.wait_ready(queue, timeout), time.monotonic() - started))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout + 10)
    assert out, "the wait did not end"
    return out[0]


def _listening_soon(engine: PostgresEngine) -> None:
    deadline = time.monotonic() + 10
    while not engine._waits._listening:
        assert time.monotonic() < deadline, "the other wait did not start listening"
        time.sleep(0.01)


def test_a_put_made_before_another_queue_listens_wakes_a_new_thread(
        engine: PostgresEngine, producer: PostgresEngine) -> None:
    assert engine.wait_ready("q", 0.2)  # opens the listening connection
    assert not engine.wait_ready("q", 0.2)  # ends: it stops listening
    producer.append("q", [b"item"], [4], time.time())  # no one listens: no one hears
    other = threading.Thread(target=engine.wait_ready, args=("other", 3.0))
    other.start()
    try:
        _listening_soon(engine)  # a wait on another queue listens again
        ready, took = _in_thread(engine, "q", 5.0)
    finally:
        engine.cancel_waits()
        other.join(10)
    assert ready and took < 2.0, (ready, took)
    assert len(engine.take("q", 5, time.time(), None)) == 1


def test_a_new_thread_with_nothing_put_sleeps_its_wait(
        engine: PostgresEngine, producer: PostgresEngine) -> None:
    assert engine.wait_ready("q", 0.2)
    assert not engine.wait_ready("q", 0.2)
    other = threading.Thread(target=engine.wait_ready, args=("other", 3.0))
    other.start()
    try:
        _listening_soon(engine)
        ready, took = _in_thread(engine, "q", 0.6)
    finally:
        engine.cancel_waits()
        other.join(10)
    assert not ready and took >= 0.5, (ready, took)
