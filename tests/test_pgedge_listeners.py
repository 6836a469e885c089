"""The postgres engine: the connections a process with many queue handles keeps open."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

import psycopg
from psycopg.conninfo import make_conninfo

from spoolq.engines.postgres import PostgresEngine


def _backends(url: str, app: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                           (app,)).fetchone()
    return 0 if row is None else int(row[0])


def _wait_all(engines: list[PostgresEngine], timeout: float
              ) -> tuple[list[threading.Thread], dict[int, tuple[bool, float]]]:
    results: dict[int, tuple[bool, float]] = {}

    def wait(k: int) -> None:
        start = time.monotonic()
        results[k] = (engines[k].wait_ready(f"q{k}", timeout), time.monotonic() - start)

    threads = [threading.Thread(target=wait, args=(k,)) for k in range(len(engines))]
    for thread in threads:
        thread.start()
    return threads, results


def test_waits_of_many_handles_of_one_process_share_one_listening_connection(
        pg_url: str, pg_schema: str) -> None:
    # A process with a blocked consumer per queue handle opened one listening connection
    # per handle: some hundred handles took every connection the server allows, and
    # every other client (and the process's own puts) got "too many clients".
    app = f"pgedge_{uuid.uuid4().hex[:10]}"
    url = make_conninfo(pg_url, application_name=app)
    engines = [PostgresEngine(url, schema=pg_schema, pool_size=2) for _ in range(12)]
    try:
        engines[0].wait_ready("warm", 0.2)  # opens the listening connection
        threads, results = _wait_all(engines, 8.0)
        time.sleep(1.0)
        assert _backends(pg_url, app) <= 2 + 1, "one listening connection per handle"
        engines[0].append("q7", [b"x"], [1], time.time())
        threads[7].join(5)
        assert results[7][0] is True and results[7][1] < 3
    finally:
        for eng in engines:
            eng.close()
    for thread in threads:
        thread.join(10)
    deadline = time.monotonic() + 5  # a closed session's backend ends a moment later
    while _backends(pg_url, app) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _backends(pg_url, app) == 0


def test_closing_one_handle_leaves_the_waits_of_the_others_of_its_process(
        pg_url: str, pg_schema: str) -> None:
    first = PostgresEngine(pg_url, schema=pg_schema)
    second = PostgresEngine(pg_url, schema=pg_schema)
    try:
        second.wait_ready("warm", 0.2)  # opens the listening connection
        threads, results = _wait_all([first, second], 6.0)
        time.sleep(0.5)
        first.close()  # its own wait ends at once
        threads[0].join(2)
        assert results[0][0] is False
        time.sleep(0.5)
        assert 1 not in results, "closing one handle ended another's wait"
        second.append("q1", [b"x"], [1], time.time())
        threads[1].join(5)
        assert results[1][0] is True and results[1][1] < 3
        third = PostgresEngine(pg_url, schema=pg_schema)
        try:
            waiter = threading.Thread(target=lambda: results.update(
                {2: (third.wait_ready("q2", 5.0), 0.0)}))
            waiter.start()
            time.sleep(0.5)
            second.append("q2", [b"x"], [1], time.time())
            waiter.join(5)
            assert results[2][0] is True
        finally:
            third.close()
    finally:
        first.close()
        second.close()
