"""The postgres engine: the conformance suite, and what is specific to PostgreSQL."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable

import pytest

import spoolq
from spoolq.engines import Engine, Lease, open_engine
from spoolq.testing import EngineConformance

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

import psycopg
from psycopg import sql

from spoolq.engines.postgres import PostgresEngine

from . import pg_support
from .pg_support import execute as _execute
from .waiting import assert_cancel_ends_a_wait, assert_one_wait_is_cancelled_alone

engine = pg_support.engine  # the fixture: an engine on the test's own schema


class TestPostgresEngine(EngineConformance):
    @pytest.fixture
    def open_engine(self, pg_url: str, pg_schema: str) -> Callable[[], Engine]:
        return lambda: PostgresEngine(pg_url, schema=pg_schema)


class TestPostgresEngineOneCounterNoNotify(EngineConformance):
    """The same contract with a single counter row, fsync durability and no notifications."""

    @pytest.fixture
    def open_engine(self, pg_url: str, pg_schema: str) -> Callable[[], Engine]:
        return lambda: PostgresEngine(pg_url, schema=pg_schema, durability="fsync",
                                      counter_slots=1, notify=False)


# ---- opening ----------------------------------------------------------------------------

def test_opened_by_url_through_the_registry(pg_url: str, pg_schema: str) -> None:
    eng = open_engine(pg_url, options={"schema": pg_schema})
    try:
        assert eng.name == "postgres"
        assert open_engine(pg_url.replace("postgresql://", "postgres://"),
                           options={"schema": pg_schema}).name == "postgres"
    finally:
        eng.close()


def test_unknown_schema_version_is_a_format_error(engine: PostgresEngine, pg_url: str,
                                                  pg_schema: str) -> None:
    engine.set_meta("schema_version", b"99")
    with pytest.raises(spoolq.FormatError, match="schema version 99"):
        PostgresEngine(pg_url, schema=pg_schema)


def test_a_schema_of_other_tables_is_a_format_error(pg_url: str, pg_schema: str) -> None:
    _execute(pg_url, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(pg_schema)))
    _execute(pg_url, sql.SQL("CREATE TABLE {}.customers (id int)").format(
        sql.Identifier(pg_schema)))
    with pytest.raises(spoolq.FormatError, match="not a spoolq queue"):
        PostgresEngine(pg_url, schema=pg_schema)


def test_read_only_reads_and_refuses_writes(engine: PostgresEngine, pg_url: str,
                                            pg_schema: str) -> None:
    with pytest.raises(spoolq.FormatError, match="no spoolq queue"):
        PostgresEngine(pg_url, schema=pg_schema + "_missing", read_only=True)
    engine.append("q", [b"x"], [1], 1.0)
    reader = PostgresEngine(pg_url, schema=pg_schema, read_only=True)
    try:
        assert reader.counts("q").ready == 1
        assert [r.data for r in reader.peek("q", 5)] == [b"x"]
        with pytest.raises(spoolq.EngineError, match="read-only") as info:
            reader.append("q", [b"y"], [1], 1.0)
        assert isinstance(info.value.__cause__, psycopg.Error)
    finally:
        reader.close()


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.delitem(sys.modules, "spoolq.engines.postgres")
    with pytest.raises(spoolq.ConfigurationError, match=r"spoolq\[postgres\]"):
        open_engine("postgresql://nobody@127.0.0.1/none")


@pytest.mark.parametrize("options", [
    {"schema": ""}, {"schema": "x" * 64}, {"schema": "jobs\x00"},
    {"synchronous_commit": "sometimes"},
    {"durability": "eventually"}, {"pool_size": 0}, {"counter_slots": 0},
    {"lock_timeout": 0},
])
def test_bad_settings(options: dict[str, object]) -> None:
    with pytest.raises(spoolq.ConfigurationError):
        PostgresEngine("postgresql://nobody@127.0.0.1:1/none", **options)  # type: ignore[arg-type]


def test_unreachable_server_is_an_engine_error_without_the_password() -> None:
    with pytest.raises(spoolq.EngineError) as info:
        PostgresEngine("postgresql://someone:s3cret@127.0.0.1:1/none", connect_timeout=2)
    assert "s3cret" not in str(info.value)
    assert "someone@127.0.0.1:1/none" in str(info.value)
    assert isinstance(info.value.__cause__, psycopg.OperationalError)


def test_durability_sets_synchronous_commit(pg_url: str, pg_schema: str) -> None:
    for durability, expected in [("fsync", "on"), ("commit", "off"), ("buffer", "off")]:
        eng = PostgresEngine(pg_url, schema=pg_schema, durability=durability)
        try:
            with eng._conn("test") as conn:
                row = conn.execute("SHOW synchronous_commit").fetchone()
            assert row == (expected,)
        finally:
            eng.close()


# ---- locking, leases and time -----------------------------------------------------------

def test_a_lock_held_too_long_is_a_lock_timeout(pg_url: str, pg_schema: str) -> None:
    eng = PostgresEngine(pg_url, schema=pg_schema, lock_timeout=0.2)
    try:
        with psycopg.connect(pg_url) as blocker:
            blocker.execute(sql.SQL("LOCK TABLE {}.meta").format(sql.Identifier(pg_schema)))
            with pytest.raises(spoolq.LockTimeout) as info:
                eng.get_meta("k")
            blocker.rollback()
        assert isinstance(info.value.__cause__, psycopg.errors.LockNotAvailable)
        assert eng.get_meta("k") is None
    finally:
        eng.close()


def test_takers_skip_rows_locked_by_others_without_waiting(engine: PostgresEngine,
                                                           pg_url: str, pg_schema: str) -> None:
    ids = engine.append("q", [b"a", b"b", b"c"], [1, 1, 1], 1.0)
    with psycopg.connect(pg_url) as other:
        other.execute(sql.SQL("SELECT id FROM {}.records WHERE id = %s FOR UPDATE").format(
            sql.Identifier(pg_schema)), (ids[0],))
        start = time.monotonic()
        got = engine.take("q", 2, time.time(), Lease("me", time.time() + 30))
        assert time.monotonic() - start < 1.0
        assert [r.data for r in got] == [b"b", b"c"]
        other.rollback()
    assert [r.data for r in engine.take("q", 5, time.time(), None)] == [b"a"]


def test_late_ack_after_expiry_does_not_remove_the_redelivered_record(
        engine: PostgresEngine) -> None:
    engine.append("q", [b"job"], [3], time.time())
    (first,) = engine.take("q", 1, time.time(), Lease("slow", time.time() + 0.2))
    time.sleep(0.3)
    assert engine.expire("q", time.time()) == 1
    (second,) = engine.take("q", 1, time.time(), Lease("fast", time.time() + 30))
    assert (second.id, second.attempts) == (first.id, 2)
    assert engine.ack("q", [(first.id, first.attempts)], "slow") == []
    assert engine.release("q", [(first.id, 1)], "slow", not_before=0.0, max_attempts=None) == []
    assert engine.counts("q")[:2] == (0, 1)
    # the same owner holding a stale token is refused just the same
    assert engine.ack("q", [(second.id, 1)], "fast") == []
    assert engine.ack("q", [(second.id, 2)], "fast") == [second.id]
    assert engine.counts("q") == (0, 0, 0, 0)


def test_leases_expire_by_the_database_clock(engine: PostgresEngine,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    engine.append("q", [b"behind", b"ahead"], [1, 1], time.time())
    real = time.time
    for skew, data in [(-3600.0, b"behind"), (3600.0, b"ahead")]:
        # a consumer whose clock is an hour off leases with its own clock's times
        monkeypatch.setattr(time, "time", lambda skew=skew: real() + skew)
        now = time.time()
        (rec,) = engine.take("q", 1, now, Lease(f"skewed{skew}", now + 0.5))
        monkeypatch.setattr(time, "time", real)
        assert rec.data == data
    assert engine.expire("q", time.time()) == 0, "a lease expired early"
    time.sleep(0.7)
    assert engine.expire("q", time.time()) == 2, "a lease outlived its ttl"


def test_delays_are_judged_by_the_database_clock(engine: PostgresEngine) -> None:
    engine.append("q", [b"x"], [1], time.time())
    (rec,) = engine.take("q", 1, time.time(), Lease("me", time.time() + 30))
    engine.release("q", [(rec.id, 1)], "me", not_before=time.time() + 0.4, max_attempts=None)
    assert engine.take("q", 1, time.time(), None) == []
    time.sleep(0.5)
    assert [r.data for r in engine.take("q", 1, time.time(), None)] == [b"x"]


def test_counts_read_the_stripes_of_many_writers(pg_url: str, pg_schema: str) -> None:
    engines = [PostgresEngine(pg_url, schema=pg_schema, counter_slots=4) for _ in range(3)]
    try:
        for i in range(30):
            engines[i % 3].append("q", [b"xx"] * 3, [4] * 3, 1.0)
        taken = sum(len(engines[i % 3].take("q", 2, time.time(), None)) for i in range(15))
        assert taken == 30
        assert engines[0].counts("q") == (60, 0, 120, 240)
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute(sql.SQL("SELECT count(*) FROM {}.counts WHERE queue = 'q'")
                                .format(sql.Identifier(pg_schema))).fetchone()
        assert rows is not None and 1 <= rows[0] <= 4
    finally:
        for eng in engines:
            eng.close()


# ---- notifications ----------------------------------------------------------------------

def test_wait_ready_hears_appends_to_its_queue(engine: PostgresEngine, pg_url: str,
                                               pg_schema: str) -> None:
    assert engine.wait_ready("q", 0.0) is True  # starts listening: look now
    assert engine.wait_ready("q", 0.1) is False
    producer = PostgresEngine(pg_url, schema=pg_schema)
    try:
        producer.append("other", [b"x"], [1], 1.0)
        assert engine.wait_ready("q", 0.2) is False
        timer = threading.Timer(0.2, producer.append, ("q", [b"y"], [1], 1.0))
        start = time.monotonic()
        timer.start()
        assert engine.wait_ready("q", 10) is True
        assert time.monotonic() - start < 5
        timer.join()
    finally:
        producer.close()


def test_close_twice_with_a_listener(engine: PostgresEngine) -> None:
    engine.wait_ready("q", 0)
    engine.close()
    engine.close()
    with pytest.raises(spoolq.EngineError, match="closed"):
        engine.counts("q")


def test_cancel_waits_ends_a_wait_at_once(engine: PostgresEngine) -> None:
    assert engine.wait_ready("q", 0) is True
    assert_cancel_ends_a_wait(engine, "q", within=1.0)


def test_a_wait_cancel_ends_its_own_wait_soon(engine: PostgresEngine) -> None:
    """Two threads wait (one listens, one waits its turn): either can be cancelled."""
    assert engine.wait_ready("q", 0) is True
    assert_one_wait_is_cancelled_alone(engine, "q", within=1.0)


def test_wait_ready_recovers_from_a_lost_listener(engine: PostgresEngine, pg_url: str) -> None:
    assert engine.wait_ready("q", 0) is True
    with psycopg.connect(pg_url, autocommit=True) as admin:
        assert engine._listener is not None
        admin.execute("SELECT pg_terminate_backend(%s)", (engine._listener.info.backend_pid,))
    # Notifications may have been lost with it: look again, with a new listener.
    start = time.monotonic()
    assert engine.wait_ready("q", 5) is True
    assert time.monotonic() - start < 1.0
    assert engine.wait_ready("q", 0.1) is False
    engine.append("q", [b"x"], [1], 1.0)
    assert engine.wait_ready("q", 5) is True


def _plan(url: str, statement: sql.Composable, params: dict[str, object]) -> str:
    """EXPLAIN ANALYZE of ``statement`` prepared and planned as the engine's pooled
    connections plan it (a generic plan, see the engine's docstring), rolled back.

    A plain ``EXPLAIN`` with bound values would plan for those values instead.
    """
    with psycopg.connect(url) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        text = re.sub(r"%\((\w+)\)s", number, statement.as_string(conn))
        conn.execute(b"PREPARE spoolq_plan AS " + text.encode())
        # Values inlined into EXECUTE leave the prepared statement's plan generic.
        cur = psycopg.ClientCursor(conn)
        cur.execute(b"EXPLAIN ANALYZE EXECUTE spoolq_plan(" + b", ".join([b"%s"] * len(names))
                    + b")", [params[name] for name in names])
        plan = "\n".join(row[0] for row in cur.fetchall())
        conn.rollback()
    return plan


def _most_read(plan: str) -> int:
    """The most rows any node of ``plan`` returned or filtered out."""
    found = re.findall(r"actual time=\S+ rows=(\d+)|Rows Removed by \w+: (\d+)", plan)
    return max((int(returned or removed) for returned, removed in found), default=0)


def test_taking_the_head_skips_other_queues_by_index(engine: PostgresEngine,
                                                      pg_url: str, pg_schema: str) -> None:
    # Records of queue "a" sort before those of "b" by id; the head of "b" must
    # be found through the index, not by filtering every record of "a".
    engine.append("a", [b"x"] * 20_000, [1] * 20_000, 1.0)
    engine.append("b", [b"y"] * 30_000, [1] * 30_000, 1.0)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}.records").format(sql.Identifier(pg_schema)))
    plan = _plan(pg_url, engine._sql.remove, engine._params("b", n=10, now_in=0.0))
    assert _most_read(plan) < 100, plan


def test_pooled_connections_plan_once(engine: PostgresEngine) -> None:
    with engine._conn("test") as conn:
        assert conn.execute("SHOW plan_cache_mode").fetchone() == ("force_generic_plan",)


def test_settling_reads_only_the_records_named(engine: PostgresEngine, pg_url: str,
                                               pg_schema: str) -> None:
    # Other consumers hold 3,000 leases; acking, nacking or checking for
    # expired leases must not read them all.
    engine.append("q", [b"x"] * 3_001, [1] * 3_001, 1.0)
    for n in range(30):
        engine.take("q", 100, time.time(), Lease(f"other{n}", time.time() + 60))
    (mine,) = engine.take("q", 1, time.time(), Lease("me", time.time() + 60))
    held = engine._params("q", owner="me", ids=[mine.id], attempts=[mine.attempts])
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}.records").format(sql.Identifier(pg_schema)))
    for statement, params in [(engine._sql.ack, held), (engine._sql.lock_held, held),
                              (engine._sql.any_expired, {"queue": "q", "now_in": 0.0})]:
        plan = _plan(pg_url, statement, params)
        assert _most_read(plan) < 100, plan
    assert engine.ack("q", [(mine.id, mine.attempts)], "me") == [mine.id]
    assert engine.expire("q", time.time()) == 0
    assert engine.counts("q")[:2] == (0, 3_000)


def test_a_large_lease_is_found_by_key(engine: PostgresEngine, pg_url: str,
                                       pg_schema: str) -> None:
    # A generic plan cannot know how many records are asked for; it must still
    # find the picked ones by key rather than hash-join the whole queue.
    engine.append("q", [b"x"] * 20_000, [1] * 20_000, 1.0)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}.records").format(sql.Identifier(pg_schema)))
    for statement in (engine._sql.lease, engine._sql.remove):
        plan = _plan(pg_url, statement, engine._params(
            "q", n=5, now_in=0.0, owner="me", until_in=30.0))
        assert _most_read(plan) < 100, plan


def test_a_schema_name_of_63_bytes_still_notifies(pg_url: str) -> None:
    schema = "spoolq_test_long_" + "x" * 46
    eng = PostgresEngine(pg_url, schema=schema)
    try:
        assert eng.wait_ready("q", 0) is True
        eng.append("q", [b"x"], [1], 1.0)
        assert eng.wait_ready("q", 5) is True
    finally:
        eng.close()
        _execute(pg_url, sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
