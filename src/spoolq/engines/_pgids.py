"""Record ids of the PostgreSQL engine across restarts of the server.

With ``synchronous_commit=off`` a crash of the server may lose the last
advances of the records' identity with the last commits; it would then hand
out again ids callers were given (what a ``put`` returned, the ``Message.id``
of a lease, with which an old message could settle a new record). ``meta``
records when the server last started or recovered from a crash of one of its
processes (the key ``server_started``, see ``_pgsql``); a connection new to an
engine that finds the server started since moves the identity on by
:data:`ID_GAP`, once per restart. psycopg's errors pass through
untranslated; the engine translates them.
"""

from __future__ import annotations

import logging
import weakref

from psycopg import errors as pg_errors

from ._pgpool import Conn
from ._pgsql import Statements

__all__ = ["ID_GAP", "RestartCheck", "after_restart"]

log = logging.getLogger("spoolq")

ID_GAP = 1 << 40
"""Ids skipped once after each restart of the server: more than a server hands out in the
moments a crash loses. Ids stay below 2**63 (the ``bigint`` column, the wire protocol)
for some eight million restarts."""

_STARTED_KEY = "server_started"


class RestartCheck:
    """:func:`after_restart` once for each connection an engine uses."""

    __slots__ = ("_checked", "_schema", "_statements", "_where")

    def __init__(self, statements: Statements, schema: str, where: str) -> None:
        self._statements, self._schema, self._where = statements, schema, where
        # The pooled connections this engine checked for a restart of the server.
        self._checked: weakref.WeakSet[Conn] = weakref.WeakSet()

    def check(self, conn: Conn) -> None:
        """Run :func:`after_restart` on ``conn`` unless it was already checked."""
        if conn not in self._checked:
            after_restart(conn, self._statements, self._schema, self._where)
            self._checked.add(conn)


def after_restart(conn: Conn, statements: Statements, schema: str, where: str) -> None:
    """Skip :data:`ID_GAP` ids once after each restart of the server, which ``conn``,
    a connection new to the engine of ``statements`` and ``schema``, may be the first
    to see; ``where`` names the queue in messages.

    The start time of the server recorded in ``meta`` tells whether it restarted
    since the last check; the skip and the new start time are flushed to disk
    before any statement of this connection (``synchronous_commit = on``),
    whatever the engine's durability. A queue that never recorded a start and
    handed ids out skips too: it may have lived through a crash. A role without
    the privileges the skip needs gets a warning, and no skip.
    """
    params = {"schema": schema, "key": _STARTED_KEY}
    started, recorded = _starts(conn, statements)
    if recorded == started:
        # The common case, and one read: no lock to wait for behind a process stalled
        # in its own check (the server holds its locks until it notices it is gone).
        return
    try:
        with conn.transaction():
            conn.execute("SET LOCAL synchronous_commit = on")
            conn.execute(statements.lock_restart, params)
            started, recorded = _starts(conn, statements)
            if recorded == started:
                return  # another connection moved the ids while this one waited
            row = None if recorded is not None else conn.execute(statements.last_id,
                                                                 params).fetchone()
            # Recorded before the move, which setval() makes at once and for good: when
            # recording fails, the ids must not have moved, or each connection moves them.
            conn.execute(statements.set_meta, {"key": _STARTED_KEY, "value": started})
            if row is None or row[0]:
                got = conn.execute(statements.skip_ids, {**params, "gap": ID_GAP}).fetchone()
                log.info("spoolq: %s: the database server restarted; ids go on from "
                         "%s, past any it may have handed out and lost in a crash",
                         where, None if got is None else got[0] + 1)
    except pg_errors.InsufficientPrivilege as exc:
        log.warning("spoolq: %s: cannot move the record ids past a restart of the "
                    "server (%s); after a crash of the server, ids handed out before it "
                    "may be handed out again", where, exc)


def _starts(conn: Conn, statements: Statements) -> tuple[bytes, bytes | None]:
    """When the server started, as ``meta`` records it, and what ``meta`` records."""
    row = conn.execute(statements.server_started, {"key": _STARTED_KEY}).fetchone()
    if row is None:
        return b"", None
    return str(row[0]).encode(), None if row[1] is None else bytes(row[1])
