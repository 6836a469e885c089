"""The postgres engine while its server goes away and comes back (seen through a TCP
relay that drops every connection and refuses new ones for a while, as a restart
does, or takes connections and never answers, as a proxy whose server is away),
a role granted only the tables, timeouts out of range, and schema names holding '%'."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import spoolq

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from spoolq.engines import _pgpool
from spoolq.engines.postgres import PostgresEngine

from . import pg_support
from .pg_support import execute as _execute

engine = pg_support.engine  # the fixture: an engine on the test's own schema


class Relay:
    """A TCP relay to the test server on a port of its own. :meth:`cut` ends every
    relayed connection and refuses new ones, as a server restarting does, until
    :meth:`restore`."""

    def __init__(self, url: str) -> None:
        parts = conninfo_to_dict(url)
        self._target = (str(parts.get("host") or "127.0.0.1"), int(parts.get("port") or 5432))
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server: socket.socket | None = None
        self.hanging = False  # accept connections but never answer, as a stuck proxy
        self.lag = 0.0  # seconds each chunk from a client waits before it is passed on
        self.port = 0
        self._listen()
        user = f"{parts['user']}@" if parts.get("user") else ""
        self.url = f"postgresql://{user}127.0.0.1:{self.port}/{parts.get('dbname') or ''}"

    def _listen(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            if self.hanging:
                with self._lock:
                    self._sockets.append(client)
                continue
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b, lagged in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, lagged), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, lagged: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if lagged and self.lag:
                    time.sleep(self.lag)
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            sockets, self._sockets = self._sockets, []
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept()
            server.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self._listen()

    def hang(self) -> None:
        """End every relayed connection; answer none of the new ones until :meth:`cut`."""
        self.hanging = True
        self.cut()
        self._listen()

    def close(self) -> None:
        self.cut()


@pytest.fixture
def relay(pg_url: str) -> Iterator[Relay]:
    r = Relay(pg_url)
    try:
        yield r
    finally:
        r.close()


def _later(delay: float, action: Any) -> threading.Timer:
    timer = threading.Timer(delay, action)
    timer.start()
    return timer


# ---- the server going away -----------------------------------------------------------------

def test_a_wait_during_a_restart_waits_for_the_server(relay: Relay, pg_schema: str) -> None:
    eng = PostgresEngine(relay.url, schema=pg_schema)
    try:
        assert eng.wait_ready("q", 0) is True  # listening now
        relay.cut()
        timer = _later(0.6, relay.restore)
        start = time.monotonic()
        assert eng.wait_ready("q", 5) is True  # listening again: look again
        took = time.monotonic() - start
        timer.join()
        assert 0.5 < took < 2.5
        assert eng.counts("q").ready == 0
    finally:
        eng.close()


def test_a_wait_ends_at_its_timeout_while_the_server_is_away(relay: Relay,
                                                             pg_schema: str) -> None:
    eng = PostgresEngine(relay.url, schema=pg_schema)
    try:
        assert eng.wait_ready("q", 0) is True
        relay.cut()
        start = time.monotonic()
        assert eng.wait_ready("q", 0.7) is False
        assert time.monotonic() - start < 1.2
        cancelled = threading.Timer(0.3, eng.cancel_waits)
        cancelled.start()
        start = time.monotonic()
        assert eng.wait_ready("q", 30) is False
        assert time.monotonic() - start < 1.0
        cancelled.join()
        relay.restore()
        assert eng.wait_ready("q", 5) is True
    finally:
        eng.close()


def test_a_blocked_get_gets_the_item_put_after_a_restart(relay: Relay, pg_url: str,
                                                         pg_schema: str) -> None:
    opts = {"schema": pg_schema}
    q = spoolq.SyncQueue.create(relay.url, name="jobs", engine_options=opts)
    producer = spoolq.SyncQueue.create(pg_url, name="jobs", engine_options=opts)
    got: list[Any] = []
    getter = threading.Thread(target=lambda: got.append(q.get(timeout=None)))
    try:
        getter.start()
        time.sleep(0.3)  # blocked in its wait
        relay.cut()
        time.sleep(0.5)
        relay.restore()
        producer.put("after")
        getter.join(5)
        assert got == ["after"]
        assert q.qsize() == 0
    finally:
        q.close()
        producer.close()
        getter.join(5)


def test_an_outage_is_reported_by_spoolq_alone_not_by_its_pool_too(
        relay: Relay, pg_url: str, pg_schema: str, caplog: pytest.LogCaptureFixture) -> None:
    """psycopg_pool warns on its own logger of each connection it loses or fails to make:
    for spoolq's pools those are kept at DEBUG under the spoolq logger (the calls that meet
    the outage raise Unavailable, and calls that wait it out warn once); a pool of the
    program's own still warns."""
    opts = {"schema": pg_schema}
    mine = ConnectionPool(relay.url, min_size=1, name="mine", open=False)
    mine.open(wait=True, timeout=5)
    q = spoolq.SyncQueue.create(relay.url, name="jobs", engine_options=opts)
    producer = spoolq.SyncQueue.create(pg_url, name="jobs", engine_options=opts)
    got: list[Any] = []
    getter = threading.Thread(target=lambda: got.append(q.get(timeout=10)))
    try:
        with caplog.at_level(logging.DEBUG):
            q.put("before")
            relay.cut()
            with pytest.raises(spoolq.Unavailable):
                q.put("during")
            getter.start()
            with pytest.raises(psycopg.OperationalError), mine.connection(timeout=1) as conn:
                conn.execute("SELECT 1")
            time.sleep(1.0)
            relay.restore()
            getter.join(10)
        assert got == ["before"]
    finally:
        q.close()
        producer.close()
        mine.close()
        getter.join(5)
    pool_warnings = [r.getMessage() for r in caplog.records
                     if r.name == "psycopg.pool" and r.levelno >= logging.WARNING]
    assert any("'mine'" in m for m in pool_warnings)
    assert not any("'spoolq'" in m for m in pool_warnings)
    # The one connection the program's pool lent out; spoolq's pool lost two and more.
    assert sum("connection: <" in m for m in pool_warnings) == 1, pool_warnings
    spoolq_debug = [r.getMessage() for r in caplog.records
                    if r.name == "spoolq" and r.levelno == logging.DEBUG]
    assert any("the connection pool: error connecting in 'spoolq'" in m for m in spoolq_debug)


def _reports(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """What the spoolq logger said above DEBUG, as (level, message)."""
    return [(r.levelno, r.getMessage()) for r in caplog.records
            if r.name == "spoolq" and r.levelno > logging.DEBUG]


def test_a_waiting_get_reports_an_outage_once_and_its_end(
        relay: Relay, pg_url: str, pg_schema: str, caplog: pytest.LogCaptureFixture) -> None:
    """A get blocked on the listener while the server is away: one warning under the
    spoolq logger (psycopg_pool's own are kept at DEBUG), and the end at INFO."""
    opts = {"schema": pg_schema}
    q = spoolq.SyncQueue.create(relay.url, name="jobs", engine_options=opts)
    producer = spoolq.SyncQueue.create(pg_url, name="jobs", engine_options=opts)
    got: list[Any] = []
    getter = threading.Thread(target=lambda: got.append(q.get(timeout=20)))
    try:
        with caplog.at_level(logging.DEBUG):
            getter.start()
            time.sleep(0.5)  # blocked in its wait, listening
            relay.cut()
            time.sleep(2.0)  # the wait tries to listen again four times meanwhile
            relay.restore()
            time.sleep(1.0)
            producer.put("after")
            getter.join(10)
        assert got == ["after"]
    finally:
        q.close()
        producer.close()
        getter.join(5)
    reports = _reports(caplog)
    warnings = [m for level, m in reports if level >= logging.WARNING]
    assert len(warnings) == 1, reports
    back = [m for level, m in reports if level == logging.INFO and "is back" in m]
    assert len(back) == 1, reports
    assert reports.index((logging.INFO, back[0])) > reports.index((logging.WARNING, warnings[0]))


def test_waits_during_one_outage_warn_once_and_the_next_outage_again(
        relay: Relay, pg_schema: str, caplog: pytest.LogCaptureFixture) -> None:
    """Every wait that met the server away warned anew: a consumer whose gets time out
    and wait again logged a warning each time for as long as the outage lasted."""
    eng = PostgresEngine(relay.url, schema=pg_schema)
    try:
        assert eng.wait_ready("q", 0) is True  # listening now
        with caplog.at_level(logging.INFO, logger="spoolq"):
            for _outage in range(2):
                relay.cut()
                for _wait in range(3):
                    assert eng.wait_ready("q", 0.6) is False
                relay.restore()
                assert eng.wait_ready("q", 5) is True  # listening again: look again
    finally:
        eng.close()
    levels = [level for level, m in _reports(caplog)
              if "cannot be reached" in m or "is back" in m]
    assert levels == [logging.WARNING, logging.INFO] * 2, _reports(caplog)


def test_calls_go_through_soon_after_the_server_is_back(relay: Relay, pg_schema: str) -> None:
    """The pool tries to reconnect on a schedule of its own: one that doubled its pause
    without bound left every call failing long after the server was back."""
    eng = PostgresEngine(relay.url, schema=pg_schema, connect_timeout=0.3)
    try:
        eng.append("q", [b"x"], [1], time.time())
        relay.cut()
        start = time.monotonic()
        with pytest.raises(spoolq.EngineError, match="no database connection within"):
            eng.counts("q")  # the pool starts reconnecting
        time.sleep(max(0.0, start + 1.1 - time.monotonic()))
        relay.restore()
        back = time.monotonic()
        while True:
            try:
                assert eng.counts("q").ready == 1
                break
            except spoolq.EngineError:
                assert time.monotonic() - back < 0.8, "no connection after the server was back"
        assert time.monotonic() - back < 0.8
    finally:
        eng.close()


def test_a_wait_without_notifications_polls_on_while_the_server_is_away(
        relay: Relay, pg_url: str, pg_schema: str) -> None:
    eng = PostgresEngine(relay.url, schema=pg_schema, notify=False, connect_timeout=5)
    other = PostgresEngine(pg_url, schema=pg_schema, notify=False)
    try:
        assert eng.wait_ready("q", 0.1) is False
        relay.cut()
        start = time.monotonic()
        assert eng.wait_ready("q", 0.4) is False  # its timeout, not connect_timeout
        assert time.monotonic() - start < 0.9
        cancelled = _later(0.2, eng.cancel_waits)
        start = time.monotonic()
        assert eng.wait_ready("q", 30) is False
        assert time.monotonic() - start < 0.7
        cancelled.join()
        _later(0.3, relay.restore)
        other.append("q", [b"x"], [1], time.time())
        assert eng.wait_ready("q", 5) is True
    finally:
        eng.close()
        other.close()



def test_a_wait_ends_soon_when_nobody_answers_its_new_listener(relay: Relay,
                                                              pg_schema: str) -> None:
    """The attempt to listen again waited connect_timeout for an answer, past the wait's
    own timeout and past close(); libpq waits 2 s at least."""
    eng = PostgresEngine(relay.url, schema=pg_schema, connect_timeout=8)
    try:
        assert eng.wait_ready("q", 0) is True
        relay.hang()
        start = time.monotonic()
        assert eng.wait_ready("q", 0.3) is False
        assert time.monotonic() - start < 3.0
    finally:
        relay.hanging = False
        eng.close()

# ---- privileges ------------------------------------------------------------------------------

def test_a_role_granted_the_tables_alone_gets_records_given_back(pg_url: str,
                                                                 pg_schema: str) -> None:
    """docs/postgres.md grants the application USAGE on the schema and SELECT, INSERT,
    UPDATE, DELETE on the tables: records a take gave back must reach the queue again."""
    role = f"{pg_schema}_app"
    PostgresEngine(pg_url, schema=pg_schema).close()  # created by the owner
    schema, ident = sql.Identifier(pg_schema), sql.Identifier(role)
    _execute(pg_url, sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    try:
        _execute(pg_url, sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, ident))
        _execute(pg_url, sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {}.meta, "
                                 "{}.records, {}.counts TO {}").format(schema, schema, schema,
                                                                      ident))
        app_url = make_conninfo(pg_url, user=role)
        eng = PostgresEngine(app_url, schema=pg_schema)
        try:
            eng.append("q", [b"a", b"b"], [1, 1], time.time())
            taken = eng.take("q", 2, time.time(), None)
            eng.restore("q", taken)
            assert [r.data for r in eng.peek("q", 5)] == [b"a", b"b"]
            assert eng.counts("q").ready == 2
            with pytest.raises(ValueError, match="never"):
                eng.restore("q", [taken[0]._replace(id=10**9)])
            assert eng.append("q", [b"c"], [1], time.time())[0] > taken[-1].id
            assert eng.counts("q").ready == 3
        finally:
            eng.close()
    finally:
        _execute(pg_url, sql.SQL("DROP OWNED BY {}").format(ident))
        _execute(pg_url, sql.SQL("DROP ROLE {}").format(ident))


def test_a_connection_attempt_nobody_answers_gives_up(relay: Relay, pg_schema: str) -> None:
    """A proxy whose server is away may take the connection and never answer. The pool's
    attempt to reconnect waited for that answer (130 s, or for ever on older psycopg), and
    a pool of one connection gave no call a connection meanwhile. libpq waits 2 s at
    least, so this test takes a little longer than the others."""
    eng = PostgresEngine(relay.url, schema=pg_schema, connect_timeout=0.3, pool_size=1)
    try:
        assert eng.counts("q").ready == 0
        relay.hang()
        with pytest.raises(spoolq.EngineError, match="no database connection within"):
            eng.counts("q")  # the pool's attempt to reconnect gets no answer
        relay.hanging = False  # new connections reach the server again
        start = time.monotonic()
        while True:
            try:
                assert eng.counts("q").ready == 0
                break
            except spoolq.EngineError:
                assert time.monotonic() - start < 3.0, "the pool never connected again"
    finally:
        eng.close()


# ---- sessions the server ends ---------------------------------------------------------------

def _with_options(url: str, options: str) -> str:
    return make_conninfo(url, options=options)


def _server_version(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.info.server_version


@pytest.mark.parametrize("timeout", ["idle_session_timeout", "idle_in_transaction_session_timeout"])
def test_a_session_ended_for_idling_is_a_lost_connection(pg_url: str, timeout: str) -> None:
    """The server ends a session idle past its timeout with an error of its own (57P05,
    25P03) rather than a connection exception (class 08): an outage, not a refusal."""
    if timeout == "idle_session_timeout" and _server_version(pg_url) < 140000:
        pytest.skip("idle_session_timeout is new in PostgreSQL 14")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET {} = '50ms'").format(sql.Identifier(timeout)))
        if timeout != "idle_session_timeout":
            conn.execute("BEGIN")
        time.sleep(0.3)
        with (pytest.raises(spoolq.Unavailable, match="q: take failed: terminating") as raised,
              _pgpool.translated("q", "take", 1.0)):
            conn.execute("SELECT 1")
    assert isinstance(raised.value.__cause__, psycopg.Error)
    assert raised.value.__cause__.sqlstate in ("57P05", "25P03")


def test_a_call_meeting_idle_session_timeout_is_unavailable_not_failed(
        relay: Relay, pg_schema: str) -> None:
    """A pooled session the server ends for idling after the pool's look at it, as the
    call's statement is on its way, fails the call as an outage (which a get or put rides
    out), never as an error of the call itself. The relay holds the statement back until
    the session's idle time has run out."""
    if _server_version(relay.url) < 140000:
        pytest.skip("idle_session_timeout is new in PostgreSQL 14")
    PostgresEngine(relay.url, schema=pg_schema).close()
    eng = PostgresEngine(_with_options(relay.url, "-c idle_session_timeout=1000"),
                         schema=pg_schema, pool_size=1)
    try:
        assert eng.counts("q").ready == 0  # the pool's one session, idle from now on
        relay.lag = 2.0
        with pytest.raises(spoolq.Unavailable) as raised:
            eng.counts("q")
        assert getattr(raised.value.__cause__, "sqlstate", None) == "57P05"
        relay.lag = 0.0
        assert eng.counts("q").ready == 0  # and the next call goes through
    finally:
        eng.close()


# ---- settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [
    {"lock_timeout": float("inf")}, {"connect_timeout": float("inf")},
    {"lock_timeout": 1e12}, {"connect_timeout": 1e12}, {"lock_timeout": float("nan")},
    {"connect_timeout": True},
])
def test_a_timeout_past_what_postgresql_takes_is_a_configuration_error(
        options: dict[str, float]) -> None:
    name = next(iter(options))
    with pytest.raises(spoolq.ConfigurationError, match=f"{name} must be a number of seconds"):
        PostgresEngine("postgresql://nobody@127.0.0.1:1/none", **options)  # type: ignore[arg-type]


# ---- names ----------------------------------------------------------------------------------

def test_a_schema_name_with_percent_signs_holds_a_queue(pg_url: str, pg_schema: str) -> None:
    """psycopg reads "%" in a statement with parameters as a placeholder."""
    schema = f"{pg_schema}%s%(queue)s%%"
    try:
        eng = PostgresEngine(pg_url, schema=schema)
        try:
            eng.append("q", [b"a", b"b"], [1, 1], time.time())
            taken = eng.take("q", 1, time.time(), None)
            assert [r.data for r in taken] == [b"a"]
            assert eng.counts("q").ready == 1 and eng.queues() == ["q"]
            assert eng.wait_ready("q", 0) is True
        finally:
            eng.close()
        again = PostgresEngine(pg_url, schema=schema)
        again.close()
    finally:
        _execute(pg_url, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
            sql.Identifier(schema)))
