"""Opening a spoolq SQLite file: its tables (see docs/file-format.md), creating them in a
new file, refusing a file that is not a spoolq queue, and sqlite3's errors in spoolq's terms."""

from __future__ import annotations

import os
import sqlite3

from ..errors import CorruptError, EngineError, FormatError, LockTimeout
from .base import FORMAT_VERSION

__all__ = ["MIN_SQLITE", "PAGE_SIZE", "PAGE_SIZES", "SCHEMA", "SYNCHRONOUS", "connect",
           "set_up", "translate"]

_APPLICATION = b"spoolq"
MIN_SQLITE = (3, 35, 0)
# Pages of a new file. Each commit writes its changed pages to the WAL whole, and a put or a
# get changes two (a records leaf and the queue's counts): 1 KiB pages made one-at-a-time
# puts and gets 25 to 50% faster than SQLite's default 4 KiB, and batches and 4 KB records
# no slower; records of 64 KiB and more put faster with larger pages (the page_size option).
# A file keeps the page size it was created with.
PAGE_SIZE = 1024
PAGE_SIZES = frozenset(1 << k for k in range(9, 17))
SYNCHRONOUS = {
    "FULL": "PRAGMA synchronous = FULL",
    "NORMAL": "PRAGMA synchronous = NORMAL",
    "OFF": "PRAGMA synchronous = OFF",
}
_TABLES = {"spoolq_meta", "spoolq_records", "spoolq_leased", "spoolq_queues"}

SCHEMA = (
    "CREATE TABLE spoolq_meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    """CREATE TABLE spoolq_queues (
        name TEXT PRIMARY KEY,
        qno INTEGER NOT NULL UNIQUE,
        last_seq INTEGER NOT NULL DEFAULT 0,
        ready INTEGER NOT NULL DEFAULT 0,
        leased INTEGER NOT NULL DEFAULT 0,
        stored_bytes INTEGER NOT NULL DEFAULT 0,
        raw_bytes INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE spoolq_records (
        id INTEGER PRIMARY KEY,
        visible_at REAL NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        enqueued_at REAL NOT NULL,
        raw_size INTEGER NOT NULL,
        reason TEXT,
        data BLOB NOT NULL)""",
    """CREATE TABLE spoolq_leased (
        id INTEGER PRIMARY KEY,
        owner TEXT NOT NULL,
        until REAL NOT NULL,
        attempts INTEGER NOT NULL,
        enqueued_at REAL NOT NULL,
        raw_size INTEGER NOT NULL,
        reason TEXT,
        data BLOB NOT NULL)""",
)


def connect(path: str, *, read_only: bool, timeout: float) -> sqlite3.Connection:
    """A connection in autocommit mode (spoolq runs its own BEGIN IMMEDIATE ... COMMIT)."""
    if read_only:
        uri = "file:" + os.path.abspath(path) + "?mode=ro"
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                               timeout=timeout)
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           timeout=timeout)


def _blank(conn: sqlite3.Connection) -> bool:
    """Whether the database is new: no schema object at all (tables, views, indexes,
    triggers) and no application id or user version another program would set."""
    return bool(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
                and conn.execute("PRAGMA application_id").fetchone()[0] == 0
                and conn.execute("PRAGMA user_version").fetchone()[0] == 0)


def _meta(conn: sqlite3.Connection, key: str) -> bytes | None:
    row = conn.execute("SELECT value FROM spoolq_meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else bytes(row[0])


def set_up(conn: sqlite3.Connection, path: str, *, read_only: bool, synchronous: str,
           page_size: int) -> None:
    """Create the tables in a new file (unless ``read_only``), check that the file is a
    spoolq queue file of this format, and set WAL mode and ``synchronous``."""
    if _blank(conn) and not read_only:
        conn.execute(f"PRAGMA page_size = {page_size}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        if _blank(conn):
            for statement in SCHEMA:
                conn.execute(statement)
            conn.executemany("INSERT INTO spoolq_meta (key, value) VALUES (?, ?)", [
                ("application", _APPLICATION),
                ("format_version", str(FORMAT_VERSION).encode()),
            ])
        conn.execute("COMMIT")
    tables = {row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    foreign = f"{path} is an SQLite database but not a spoolq queue file"
    if not tables >= _TABLES:
        raise FormatError(foreign)
    version = _meta(conn, "format_version")
    if _meta(conn, "application") != _APPLICATION or version is None:
        raise FormatError(foreign)
    if version != str(FORMAT_VERSION).encode():
        raise FormatError(f"{path} has format version {version.decode(errors='replace')}; "
                          f"this spoolq reads version {FORMAT_VERSION}")
    if not read_only:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(SYNCHRONOUS[synchronous])


def translate(exc: sqlite3.Error, path: str, what: str) -> EngineError:
    """The spoolq error for a sqlite3 error (the caller raises it ``from exc``)."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return LockTimeout(f"{path}: {what} waited too long for a lock: {text}")
    if "malformed" in text or "corrupt" in text:
        return CorruptError(f"{path} is damaged: {text}")
    if "not a database" in text:
        return FormatError(f"{path} is not a spoolq queue file ({text})")
    return EngineError(f"{path}: {what} failed: {text}")
