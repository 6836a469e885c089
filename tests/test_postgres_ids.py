"""PostgreSQL record ids across a restart of the server: with ``synchronous_commit=off``
a crash can lose the sequence's last advances, and the ids handed out then would be
handed out again. The engine skips the ids past a gap once after each restart of the
server, which it notices by ``pg_postmaster_start_time()`` (and a recovery from a crash by
the reset time of the shared statistics). The shared server is never
restarted here: a start time written into the meta table stands for one."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

import psycopg
from psycopg import sql

import spoolq
from spoolq.engines.postgres import ID_GAP, PostgresEngine

from .pg_support import execute, meta_reader_role

STARTED = "server_started"


def _started(url: str) -> bytes:
    """The server's start time as the engine records it."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM pg_postmaster_start_time())::text || ' ' || "
            "coalesce(extract(epoch FROM (SELECT stats_reset FROM pg_stat_bgwriter))::text, "
            "'')").fetchone()
    assert row is not None
    return str(row[0]).encode()


@pytest.fixture
def opened(pg_url: str, pg_schema: str) -> Iterator[list[PostgresEngine]]:
    """Engines opened by a test, closed after it."""
    engines: list[PostgresEngine] = []
    yield engines
    for eng in engines:
        eng.close()


def _open(opened: list[PostgresEngine], url: str, schema: str, *, read_only: bool = False
          ) -> PostgresEngine:
    # A pool of its own (its size is part of the pool's key): new connections.
    eng = PostgresEngine(url, schema=schema, pool_size=len(opened) + 5, read_only=read_only)
    opened.append(eng)
    return eng


def test_a_new_schema_records_the_start_and_counts_from_one(
        opened: list[PostgresEngine], pg_url: str, pg_schema: str) -> None:
    eng = _open(opened, pg_url, pg_schema)
    assert eng.append("q", [b"a", b"b"], [1, 1], 1.0) == [1, 2]
    assert eng.get_meta(STARTED) == _started(pg_url)


def test_a_restart_since_the_last_connection_skips_every_id_given_out(
        opened: list[PostgresEngine], pg_url: str, pg_schema: str) -> None:
    """Connections opened after a restart move the ids past a gap, once: an id handed
    out before the crash (even one whose advance the crash lost) is never given again."""
    eng = _open(opened, pg_url, pg_schema)
    given = eng.append("q", [b"a", b"b", b"c"], [1, 1, 1], 1.0)
    eng.set_meta(STARTED, b"12345.678")  # as if recorded before a restart
    again = _open(opened, pg_url, pg_schema)
    (first,) = again.append("q", [b"d"], [1], 2.0)
    assert first > max(given) + ID_GAP - 1
    assert again.get_meta(STARTED) == _started(pg_url)
    # Every connection after that sees the start it recorded: no second gap.
    other = _open(opened, pg_url, pg_schema)
    assert other.append("q", [b"e"], [1], 3.0) == [first + 1]
    assert eng.append("q", [b"f"], [1], 3.0) == [first + 2]
    assert [r.data for r in eng.take("q", 10, 5.0, None)] == [b"a", b"b", b"c", b"d", b"e",
                                                             b"f"]


def test_the_same_start_moves_no_id(opened: list[PostgresEngine], pg_url: str,
                                    pg_schema: str) -> None:
    eng = _open(opened, pg_url, pg_schema)
    assert eng.append("q", [b"a"], [1], 1.0) == [1]
    for k in range(3):
        assert _open(opened, pg_url, pg_schema).append("q", [b"b"], [1], 1.0) == [k + 2]


def test_a_schema_without_a_recorded_start_skips_once_if_it_gave_ids_out(
        opened: list[PostgresEngine], pg_url: str, pg_schema: str) -> None:
    """A queue made before the start was recorded may have lived through a crash."""
    eng = _open(opened, pg_url, pg_schema)
    assert eng.append("q", [b"a"], [1], 1.0) == [1]
    execute(pg_url, sql.SQL("DELETE FROM {}.meta WHERE key = %s").format(
        sql.Identifier(pg_schema)), STARTED)
    (first,) = _open(opened, pg_url, pg_schema).append("q", [b"b"], [1], 1.0)
    assert first > ID_GAP
    assert _open(opened, pg_url, pg_schema).append("q", [b"c"], [1], 1.0) == [first + 1]


def test_engines_noticing_one_restart_together_skip_once(
        opened: list[PostgresEngine], pg_url: str, pg_schema: str) -> None:
    eng = _open(opened, pg_url, pg_schema)
    eng.append("q", [b"a"], [1], 1.0)
    eng.set_meta(STARTED, b"12345.678")
    engines = [_open(opened, pg_url, pg_schema) for _ in range(6)]
    barrier = threading.Barrier(len(engines))
    ids: list[int] = []

    def put(e: PostgresEngine) -> None:
        barrier.wait()
        ids.extend(e.append("q", [b"b"], [1], 1.0))

    threads = [threading.Thread(target=put, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == len(engines)
    assert min(ids) > ID_GAP and max(ids) < 2 * ID_GAP


def test_a_read_only_engine_moves_no_id(opened: list[PostgresEngine], pg_url: str,
                                        pg_schema: str) -> None:
    eng = _open(opened, pg_url, pg_schema)
    eng.append("q", [b"a"], [1], 1.0)
    eng.set_meta(STARTED, b"12345.678")
    reader = _open(opened, pg_url, pg_schema, read_only=True)
    assert [r.data for r in reader.peek("q", 5)] == [b"a"]
    assert reader.get_meta(STARTED) == b"12345.678"


def _lock_restart(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('spoolq restart ' || %s, 0))",
                 (schema,))


def test_a_process_stalled_in_its_check_holds_up_nobody_once_the_start_is_recorded(
        opened: list[PostgresEngine], pg_url: str, pg_schema: str) -> None:
    """A process whose host vanished in the middle of its check keeps the restart lock
    until the server notices (hours, with the server's default keepalives). Connections
    new to other engines, and other processes, waited for it up to lock_timeout and then
    failed every call, reads too, although the start was recorded long before."""
    _open(opened, pg_url, pg_schema).append("q", [b"a"], [1], 1.0)  # the start recorded
    with psycopg.connect(pg_url, autocommit=True) as stalled, stalled.transaction():
        _lock_restart(stalled, pg_schema)
        eng = PostgresEngine(pg_url, schema=pg_schema, pool_size=9, lock_timeout=0.5)
        opened.append(eng)
        assert eng.counts("q").ready == 1
        assert eng.append("q", [b"b"], [1], 1.0) == [2]


def test_engines_noticing_a_restart_wait_for_the_one_moving_the_ids(
        opened: list[PostgresEngine], pg_url: str, pg_schema: str) -> None:
    """While another process moves the ids after a restart, a new connection waits: an id
    it handed out before the move is done could be one given out before the crash."""
    _open(opened, pg_url, pg_schema).append("q", [b"a"], [1], 1.0)
    with psycopg.connect(pg_url, autocommit=True) as mover:
        with mover.transaction():
            _lock_restart(mover, pg_schema)
            mover.execute(sql.SQL("UPDATE {}.meta SET value = 'before' WHERE key = %s").format(
                sql.Identifier(pg_schema)), (STARTED,))
        with mover.transaction():
            _lock_restart(mover, pg_schema)
            eng = PostgresEngine(pg_url, schema=pg_schema, pool_size=9, lock_timeout=0.5)
            opened.append(eng)
            with pytest.raises(spoolq.LockTimeout):
                eng.append("q", [b"b"], [1], 1.0)
        (first,) = eng.append("q", [b"b"], [1], 1.0)
        assert first > ID_GAP


def test_a_role_that_may_not_record_the_start_moves_the_ids_no_further(
        opened: list[PostgresEngine], pg_url: str, pg_schema: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """setval() is not undone by a rollback: when recording the start failed after the
    move, every connection new to an engine moved the ids on by ID_GAP again."""
    owner = _open(opened, pg_url, pg_schema)
    owner.append("q", [b"a"], [1], 1.0)
    owner.set_meta(STARTED, b"12345.678")  # as if recorded before a restart
    with meta_reader_role(pg_url, pg_schema, f"{pg_schema}_ids") as app_url:
        try:
            ids = [_open(opened, app_url, pg_schema).append("q", [b"b"], [1], 1.0)[0]
                   for _ in range(3)]
            assert ids == [2, 3, 4]
            assert "cannot move the record ids" in caplog.text
        finally:
            for eng in opened:
                eng.close()
            opened.clear()
