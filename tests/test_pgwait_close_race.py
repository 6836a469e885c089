"""A wait_ready of a PostgreSQL engine that was waiting its turn for the process's
listening connection when the engine closed ends, as a wait that close() cancels
does: it took its turn just after the close had let the listener go, found
it closed and raised EngineError ("wait_ready: the engine is closed") in its thread."""

from __future__ import annotations

import os
import threading
import time

import pytest

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

from spoolq.engines.postgres import PostgresEngine


def test_waits_waiting_their_turn_as_their_engines_close_end_quietly(
        pg_url: str, pg_schema: str) -> None:
    errors: list[BaseException] = []
    results: list[bool] = []

    def wait(engine: PostgresEngine, queue: str) -> None:
        try:
            results.append(engine.wait_ready(queue, 5.0))
        except BaseException as exc:
            errors.append(exc)

    for _ in range(10):
        # One listening connection for the process: one wait listens, the others wait
        # their turn; the last engine to close closes it.
        engines = [PostgresEngine(pg_url, schema=pg_schema) for _ in range(8)]
        engines[0].wait_ready("warm", 0.05)  # opens the listening connection
        threads = [threading.Thread(target=wait, args=(engine, f"q{k}"))
                   for k, engine in enumerate(engines)]
        for thread in threads:
            thread.start()
        time.sleep(0.1)
        for engine in engines:
            engine.close()
        for thread in threads:
            thread.join(5)
        assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert len(results) == 80  # each ended (with False, or a hint that came first)
