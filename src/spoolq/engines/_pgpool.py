"""Connections of the PostgreSQL engine: the per-process registry of shared pools,
fork safety, the health check that replaces pooled connections the server closed,
and the dedicated connections opened outside the pool.

Engines of one process opened with the same connection string and settings
share one ``psycopg_pool.ConnectionPool``, counted by users and closed when
the last one lets go. A pool belongs to the process that opened it: its key
holds the process id, so a child started with fork opens pools of its own
instead of using sockets it shares with its parent.
"""

from __future__ import annotations

import logging
import math
import select
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

if TYPE_CHECKING:
    from psycopg_pool.base import AttemptWithBackoff
else:
    try:
        from psycopg_pool.base import AttemptWithBackoff
    except ImportError:  # psycopg_pool 3.2.0
        from psycopg_pool.base import ConnectionAttempt as AttemptWithBackoff

from .._inchild import ChildLock
from ..errors import (
    ConfigurationError,
    CorruptError,
    EngineError,
    FormatError,
    LockTimeout,
    Unavailable,
)

__all__ = [
    "SYNCHRONOUS_COMMIT",
    "TCP_DEFAULTS",
    "Conn",
    "PoolKey",
    "acquire_pool",
    "check_options",
    "connect",
    "connection",
    "connection_lost",
    "describe",
    "readable",
    "release_pool",
    "translated",
]

log = logging.getLogger("spoolq")

Conn = psycopg.Connection[tuple[Any, ...]]
# The process id is part of a pool's key: a process started with fork inherits
# its parent's pools, whose connections share their sockets with the parent's.
PoolKey = tuple[int, str, tuple[tuple[str, str], ...], int]
"""(process id, connection string, session settings as (name, value), pool size)."""


class _SharedPool:
    __slots__ = ("pool", "users")

    def __init__(self, pool: ConnectionPool[Conn]) -> None:
        self.pool = pool
        self.users = 0


#: libpq settings a connection string that does not name them gets: a server whose host
#: vanished (a failover, a cut network) fails a call within about a minute, instead of
#: after the system's TCP retries (some 15 minutes) or, while idle, never. A server that
#: is only slow answers the probes, so long statements are not cut short. Connections
#: through a Unix socket ignore them.
TCP_DEFAULTS = {"keepalives_idle": "30", "keepalives_interval": "10",
                "keepalives_count": "3", "tcp_user_timeout": "60000"}


def _with_defaults(conninfo: str) -> str:
    """``conninfo`` with the TCP_DEFAULTS it does not set itself."""
    given = conninfo_to_dict(conninfo)
    if psycopg.pq.version() < 120000:  # libpq learnt tcp_user_timeout in version 12
        given["tcp_user_timeout"] = None
    return make_conninfo(conninfo, **{name: value for name, value in TCP_DEFAULTS.items()
                                      if name not in given})


_RECONNECT_MAX = 2.0  # seconds between a pool's attempts to reconnect, at most


class _Attempt(AttemptWithBackoff):
    """psycopg_pool's schedule of attempts to replace a lost connection, starting
    sooner and never waiting more than ``_RECONNECT_MAX`` between two. Its own
    doubles without bound (1, 2, 4, ... 128 s), so after a restart of a minute
    the pool tried again only about a minute after the server was back, and
    every call until then failed for want of a connection."""

    INITIAL_DELAY = 0.2

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, _RECONNECT_MAX)


class _Pool(ConnectionPool[Conn]):
    """A pool that reconnects on :class:`_Attempt`'s schedule."""

    def _add_connection(self, attempt: AttemptWithBackoff | None,
                        growing: bool = False) -> None:
        super()._add_connection(attempt or _attempt(self.reconnect_timeout), growing)


def _attempt(timeout: float) -> AttemptWithBackoff:
    try:
        return _Attempt(timeout=timeout)
    except TypeError:  # psycopg_pool 3.2.0 calls it reconnect_timeout
        return _Attempt(reconnect_timeout=timeout)  # type: ignore[call-arg]


# What every session of the engine runs with, whatever the database, role or URL set:
# - read committed: a statement that waited for a row lock (a counter stripe, a record)
#   then reads the row's new version, where repeatable read and serializable fail it
#   ("could not serialize access");
# - PostgreSQL's own functions, operators and types: the statements name every table with
#   its schema but find length(), unnest(), = or bytea along the search_path, where a
#   schema listed ahead of pg_catalog would have its own of those names used instead.
_SESSION = ("SET default_transaction_isolation = 'read committed'",
            "SET search_path = pg_catalog, pg_temp")


def _set_session(conn: Conn) -> None:
    for statement in _SESSION:
        conn.execute(statement)


_POOL_NAME = "spoolq"
# The connections of this process's pools, for _PoolMessages to know them by.
_POOLED: weakref.WeakSet[Conn] = weakref.WeakSet()


class _PoolMessages(logging.Filter):
    """Moves what psycopg_pool logs about spoolq's pools (a connection lost, an attempt
    to reconnect that failed: a warning each, several for one outage) to the spoolq
    logger at DEBUG: the queue reports the outage itself, once. What it logs about the
    program's other pools passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if not any(_of_spoolq(arg) for arg in args):
            return True
        log.debug("spoolq: the connection pool: %s", record.getMessage())
        return False


def _of_spoolq(arg: object) -> bool:
    """Whether an argument of a psycopg_pool message names one of spoolq's pools: its
    name, one of its connections, or one of its tasks (which refer to their pool)."""
    if isinstance(arg, str):
        return arg == _POOL_NAME
    if isinstance(arg, psycopg.Connection):
        return arg in _POOLED
    pool = getattr(arg, "pool", None)
    return callable(pool) and isinstance(pool(), _Pool)


logging.getLogger("psycopg.pool").addFilter(_PoolMessages())

_POOLS: dict[PoolKey, _SharedPool] = {}
_POOLS_LOCK = ChildLock()  # held while a queue opens or closes


def acquire_pool(key: PoolKey, timeout: float) -> ConnectionPool[Conn]:
    """The pool for ``key``, opened (waiting up to ``timeout`` seconds for its first
    connection) if no engine of this process uses it yet; pair with :func:`release_pool`."""
    _pid, conninfo, settings, size = key
    with _POOLS_LOCK.lock:
        shared = _POOLS.get(key)
        if shared is None:
            def configure(conn: Conn) -> None:
                _POOLED.add(conn)
                _set_session(conn)
                for name, value in settings:
                    conn.execute("SELECT set_config(%s, %s, false)", (name, value))
                if conn.info.server_version >= 120000:  # the setting is new in PostgreSQL 12
                    conn.execute("SET plan_cache_mode = force_generic_plan")

            # Each attempt to connect gives up in time (libpq waits at least 2 s): one
            # that a server or proxy accepted and never answered would otherwise hold
            # the pool's attempt for ever, and no call got a connection again.
            given = conninfo_to_dict(conninfo)
            bounded = conninfo if given.get("connect_timeout") else make_conninfo(
                conninfo, connect_timeout=str(max(2, math.ceil(timeout))))
            pool: ConnectionPool[Conn] = _Pool(
                _with_defaults(bounded), min_size=1, max_size=size, open=False,
                configure=configure,
                kwargs={"autocommit": True, "fallback_application_name": "spoolq"},
                timeout=timeout, name=_POOL_NAME)
            pool.open(wait=True, timeout=timeout)
            shared = _POOLS[key] = _SharedPool(pool)
        shared.users += 1
        return shared.pool


def release_pool(key: PoolKey) -> None:
    """Let go of one use of the pool for ``key``; the last one closes it."""
    with _POOLS_LOCK.lock:
        shared = _POOLS.get(key)
        if shared is None:
            return
        shared.users -= 1
        if shared.users > 0:
            return
        del _POOLS[key]
    shared.pool.close()


# Beside connection exceptions (class 08): a server shutting down or starting up, and
# a session it ended for idling (idle_session_timeout, idle_in_transaction_session_timeout).
_GONE_STATES = ("57P01", "57P02", "57P03", "57P05", "25P03")


def connection_lost(exc: BaseException) -> bool:
    """Whether psycopg's ``exc`` says the server could not be reached or dropped the
    connection, rather than refused what was sent."""
    state = getattr(exc, "sqlstate", None)
    if state is None:
        return isinstance(exc, psycopg.OperationalError)
    return str(state).startswith("08") or state in _GONE_STATES


@contextmanager
def translated(where: str, what: str, timeout: float) -> Iterator[None]:
    """Translate psycopg's errors into spoolq's, keeping the original as ``__cause__``:
    ``where`` names the queue, ``what`` the call, ``timeout`` the seconds waited for a
    connection."""
    try:
        yield
    except PoolTimeout as exc:
        raise Unavailable(f"{where}: {what}: no database connection within "
                          f"{timeout:g}s") from exc
    except pg_errors.LockNotAvailable as exc:
        raise LockTimeout(f"{where}: {what} waited too long for a lock: {exc}") from exc
    except (pg_errors.DataCorrupted, pg_errors.IndexCorrupted) as exc:
        raise CorruptError(f"{where} is damaged: {exc}") from exc
    except pg_errors.UndefinedTable as exc:
        raise FormatError(f"{where}: the spoolq tables are gone: {exc}") from exc
    except (pg_errors.UndefinedColumn, pg_errors.InvalidColumnReference) as exc:
        # The engine's statements name only the columns and keys it creates (an upsert
        # without its key is InvalidColumnReference): another program changed them.
        raise FormatError(f"{where}: {what}: the spoolq tables were altered: {exc}") from exc
    except psycopg.Error as exc:
        kind = Unavailable if connection_lost(exc) else EngineError
        raise kind(f"{where}: {what} failed: {exc}") from exc


def readable(conn: Conn) -> bool:
    """Whether the server sent ``conn`` something it has not read yet (or closed it)."""
    if conn.closed:
        return True
    fd = conn.fileno()
    if hasattr(select, "poll"):  # select.select cannot watch descriptors past 1023
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])


def _ended_by_server(conn: Conn) -> bool:
    """Whether the server closed an idle pooled connection (a restart, a failover, a
    terminated backend, ``idle_session_timeout``): such a session is never sent anything
    else, so anything to read on its socket is the server's goodbye."""
    return readable(conn)


@contextmanager
def connection(pool: ConnectionPool[Conn], timeout: float, where: str) -> Iterator[Conn]:
    """A connection of ``pool`` that the server has not closed, waiting up to ``timeout``
    seconds for one; psycopg's errors pass through untranslated."""
    # After a server restart every idle connection of the pool is dead; the
    # ones that say so before anything is sent are replaced, so that the
    # call goes through instead of failing once per pooled connection.
    for attempt in range(pool.max_size + 1):
        with pool.connection(timeout=timeout) as conn:
            if attempt == pool.max_size or not _ended_by_server(conn):
                yield conn
                return
            log.info("spoolq: %s: a pooled connection was closed by the server; "
                     "using another", where)
            conn.close()


def connect(conninfo: str, timeout: float) -> Conn:
    """A connection of its own, outside every pool, in autocommit mode."""
    conn = psycopg.connect(_with_defaults(conninfo), autocommit=True,
                           connect_timeout=max(2, math.ceil(timeout)),
                           fallback_application_name="spoolq")
    try:
        _set_session(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def describe(conninfo: str, schema: str) -> str:
    """Where the queue lives, for messages: never the password."""
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"not a PostgreSQL connection string: {exc}") from exc
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return (f"postgresql://{user}{parts.get('host') or 'localhost'}{port}/"
            f"{parts.get('dbname') or ''} (schema {schema})")


SYNCHRONOUS_COMMIT = {"fsync": "on", "commit": "off", "buffer": "off"}
"""The ``synchronous_commit`` each durability level runs with."""

_MAX_TIMEOUT = 2147483.0  # seconds: 2**31 - 1 milliseconds, some 24 days

_SYNC_VALUES = ("on", "off", "local", "remote_write", "remote_apply")


def check_options(schema: object, durability: str, synchronous_commit: str | None,
                  pool_size: object, counter_slots: object, connect_timeout: float,
                  lock_timeout: float) -> str:
    """Check the PostgreSQL engine's options (ConfigurationError, naming the one that is
    wrong); return the ``synchronous_commit`` its sessions run with."""
    if (not isinstance(schema, str) or not schema or len(schema.encode()) > 63
            or "\x00" in schema):
        raise ConfigurationError(
            f"schema must be a name of 1 to 63 bytes without NUL, not {schema!r}")
    if synchronous_commit is None:
        if durability not in SYNCHRONOUS_COMMIT:
            raise ConfigurationError(f"unknown durability {durability!r}")
        synchronous_commit = SYNCHRONOUS_COMMIT[durability]
    if synchronous_commit not in _SYNC_VALUES:
        raise ConfigurationError(
            f"synchronous_commit must be one of {', '.join(_SYNC_VALUES)}, "
            f"not {synchronous_commit!r}")
    if not isinstance(pool_size, int) or pool_size < 1:
        raise ConfigurationError(f"pool_size must be an int >= 1, not {pool_size!r}")
    if not isinstance(counter_slots, int) or not 1 <= counter_slots <= 1000:
        raise ConfigurationError(
            f"counter_slots must be an int from 1 to 1000, not {counter_slots!r}")
    for name, value in (("connect_timeout", connect_timeout), ("lock_timeout", lock_timeout)):
        # PostgreSQL takes a lock_timeout of at most 2**31 - 1 ms, libpq whole seconds
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not 0 < value <= _MAX_TIMEOUT):
            raise ConfigurationError(
                f"{name} must be a number of seconds > 0 and at most {_MAX_TIMEOUT:.0f}, "
                f"not {value!r}")
    return synchronous_commit
