"""The postgres engine: wake-ups shared by waiting threads, and the edges of its input
and of its schema."""

from __future__ import annotations

import os
import threading
import time

import pytest

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

from spoolq.engines.postgres import PostgresEngine

from . import pg_support

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
