"""Opening the PostgreSQL engine's schema: create the tables on first use, then check
that what the schema holds is a spoolq queue of the format version this code reads.

A schema holding anything else (someone's tables, views or sequences) is no
place to create tables in, and one holding spoolq tables of another version is
refused: both are a :class:`~spoolq.errors.FormatError`. A schema of a release
that recorded ``schema_version`` alone is of format version 1; opening it for
writing records ``format_version`` too, and changes nothing else. psycopg's errors
pass through untranslated; the engine translates them.
"""

from __future__ import annotations

import logging

from psycopg import errors as pg_errors
from psycopg import sql

from ..errors import FormatError
from ._pgpool import Conn
from ._pgsql import FORMAT_VERSION, SCHEMA_VERSION, TABLES, Statements, ddl

__all__ = ["open_schema"]

log = logging.getLogger("spoolq")

_APPLICATION = b"spoolq"
_FORMAT = str(FORMAT_VERSION).encode()
_COLUMNS = {
    "meta": {("key", "text"), ("value", "bytea")},
    "records": {("id", "bigint"), ("queue", "text"), ("leased", "boolean"),
                ("visible_at", "timestamp with time zone"), ("attempts", "integer"),
                ("owner", "text"), ("enqueued_at", "double precision"),
                ("raw_size", "bigint"), ("reason", "text"), ("data", "bytea")},
    "counts": {("queue", "text"), ("slot", "smallint"), ("ready", "bigint"),
               ("leased", "bigint"), ("stored_bytes", "bigint"), ("raw_bytes", "bigint")},
}
"""The columns, as (name, type), that the engine's statements read and write."""

_KEYS = {"meta": ("key",), "records": ("queue", "id"), "counts": ("queue", "slot")}
"""The columns of each table's unique key: the upserts name it (ON CONFLICT), and a restore
is refused by it."""


def open_schema(conn: Conn, schema: str, statements: Statements, *, where: str,
                read_only: bool, lock_timeout: str) -> dict[str, bytes]:
    """Create ``schema`` and its tables through ``conn`` if missing (unless ``read_only``),
    then check what is there. ``statements`` are the engine's for ``schema``;
    ``where`` names the queue in messages.

    Returns the meta keys the schema does not record but holds all the same: the
    format version of a schema of an earlier release that this open did not record
    (``read_only``, or a role or server that may not write ``meta``)."""
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (lock_timeout,))
    with conn.transaction():
        # Two processes opening a new schema at once must not both create it.
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                     (f"spoolq schema {schema}",))
        relations = _relations(conn, schema)
        if not relations and not read_only:
            _create(conn, schema, where, statements.set_meta)
            relations = _relations(conn, schema)
    if not relations:
        raise FormatError(f"{where}: no spoolq queue in this schema")
    tables = {name for name, kind in relations.items() if kind in ("r", "p")}
    # Checked in the catalog before reading: a table of someone else's
    # named "meta" would fail that read with an error about its columns.
    columns = _columns(conn, schema)
    if not set(TABLES) <= tables or not columns.get("meta", set()) >= _COLUMNS["meta"]:
        raise FormatError(f"{where}: the schema holds tables that are not a "
                          "spoolq queue; pick another schema")
    meta: dict[str, bytes] = {key: bytes(value) for key, value in conn.execute(sql.SQL(
        "SELECT key, value FROM {}.meta "
        "WHERE key IN ('application', 'schema_version', 'format_version')"
    ).format(sql.Identifier(schema)))}
    _check_versions(meta, where)
    # A spoolq queue whose tables lost or changed a column would fail its first
    # statement with an error about SQL; say at open what is wrong instead.
    missing = sorted(f"{table}.{name} {kind}" for table in TABLES
                     for name, kind in _COLUMNS[table] - columns.get(table, set()))
    if missing:
        raise FormatError(f"{where}: the spoolq tables are damaged: no column "
                          f"{', '.join(missing)}")
    _check_keys(conn, schema, where)
    if "format_version" in meta or (not read_only and _record_format(conn, where, statements)):
        return {}
    return {"format_version": _FORMAT}


def _check_versions(meta: dict[str, bytes], where: str) -> None:
    """FormatError unless ``meta`` (its keys ``application``, ``schema_version`` and
    ``format_version``) is a spoolq queue's of the version this code reads."""
    version, schema_version = meta.get("format_version"), meta.get("schema_version")
    if meta.get("application") != _APPLICATION or (version is None and schema_version is None):
        raise FormatError(f"{where}: the schema holds tables that are not a spoolq queue")
    if version is not None and version != _FORMAT:
        raise FormatError(f"{where} has format version {version.decode(errors='replace')}; "
                          f"this spoolq reads version {FORMAT_VERSION}")
    if schema_version is not None and schema_version != str(SCHEMA_VERSION).encode():
        raise FormatError(
            f"{where} has schema version {schema_version.decode(errors='replace')}; "
            f"this spoolq reads version {SCHEMA_VERSION}")


def _record_format(conn: Conn, where: str, statements: Statements) -> bool:
    """Record the format version of a schema of an earlier release, which recorded
    ``schema_version`` alone; False when the role or the server may not write ``meta``."""
    try:
        conn.execute(statements.add_meta, {"key": "format_version", "value": _FORMAT})
    except (pg_errors.InsufficientPrivilege, pg_errors.ReadOnlySqlTransaction) as exc:
        log.info("spoolq: %s: cannot record the format version of this schema of an "
                 "earlier release (%s); it is version %d all the same", where, exc,
                 FORMAT_VERSION)
        return False
    log.info("spoolq: %s: recorded format version %d in the schema of an earlier release",
             where, FORMAT_VERSION)
    return True


def _columns(conn: Conn, schema: str) -> dict[str, set[tuple[str, str]]]:
    """The columns of the schema's tables named in TABLES, as (name, type) by table."""
    found: dict[str, set[tuple[str, str]]] = {}
    for table, name, kind in conn.execute(
            """SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod)
            FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = ANY(%s) AND a.attnum > 0
              AND NOT a.attisdropped""", (schema, list(TABLES))):
        found.setdefault(table, set()).add((name, kind))
    return found


def _check_keys(conn: Conn, schema: str, where: str) -> None:
    """FormatError when a table lost its unique key (:data:`_KEYS`) or ``records.id`` its
    identity: another program altered them, and every put or take would fail (or a
    restore store two records of one id)."""
    keys = {(table, frozenset(columns)) for table, columns in conn.execute(
        """SELECT c.relname::text, array(SELECT a.attname::text FROM pg_attribute a
                WHERE a.attrelid = c.oid AND a.attnum = ANY(i.indkey))
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = ANY(%s) AND i.indisunique AND i.indisvalid
          AND i.indpred IS NULL AND i.indexprs IS NULL""", (schema, list(_KEYS)))}
    lost = [f"{table} ({', '.join(columns)})" for table, columns in _KEYS.items()
            if (table, frozenset(columns)) not in keys]
    if lost:
        raise FormatError(f"{where}: the spoolq tables are damaged: no unique key on "
                          f"{'; '.join(lost)}")
    row = conn.execute(
        """SELECT a.attidentity::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = 'records' AND a.attname = 'id'""",
        (schema,)).fetchone()
    if row is None or row[0] not in ("a", "d"):
        raise FormatError(f"{where}: the spoolq tables are damaged: records.id gives out "
                          "no ids (its identity was dropped)")


def _relations(conn: Conn, schema: str) -> dict[str, str]:
    """Every table, view, sequence, foreign table or composite type in the schema, with
    its relkind: a schema holding any of them is someone's, and no place to create
    tables in."""
    return {row[0]: row[1] for row in conn.execute(
        """SELECT c.relname, c.relkind::text FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c')""",
        (schema,))}


def _create(conn: Conn, schema: str, where: str, set_meta: sql.Composed) -> None:
    if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                    (schema,)).fetchone() is None:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    for statement in ddl(schema, conn.info.server_version):
        conn.execute(statement)
    for key, value in (("application", _APPLICATION), ("format_version", _FORMAT),
                       ("schema_version", str(SCHEMA_VERSION).encode())):
        conn.execute(set_meta, {"key": key, "value": value})
    log.info("spoolq: created the queue tables in %s", where)
