"""Opening a spoolq SQLite file: its tables (see docs/file-format.md), creating them in a
new file, refusing a file that is not a spoolq queue, and sqlite3's errors in spoolq's terms."""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any
from urllib.parse import quote

from ..errors import (
    ClosedError,
    ConfigurationError,
    CorruptError,
    EngineError,
    FormatError,
    LockTimeout,
)
from ._diskspace import full_disk_note
from ._forkguard import enter, leave
from ._shared import check_directory
from .base import FORMAT_VERSION

__all__ = ["INHERITED", "MIN_SQLITE", "PAGE_SIZE", "PAGE_SIZES", "SCHEMA", "SYNCHRONOUS",
           "BusyTimeout", "Closed", "Unlocked", "check_settings", "check_unchanged",
           "connect", "length_limit", "open_connection", "set_up", "translate"]

_APPLICATION = b"spoolq"
# Every SQLite database starts with these 16 bytes (https://sqlite.org/fileformat.html).
_HEADER = b"SQLite format 3\x00"
MIN_SQLITE = (3, 35, 0)
# Pages of a new file. Each commit writes its changed pages to the WAL whole, and a put or a
# get changes two (a records leaf and the queue's counts): 1 KiB pages made one-at-a-time
# puts and gets 25 to 50% faster than SQLite's default 4 KiB, and batches and 4 KB records
# no slower; records of 64 KiB and more put faster with larger pages (the page_size option).
# A file keeps the page size it was created with.
PAGE_SIZE = 1024
PAGE_SIZES = frozenset(1 << k for k in range(9, 17))
# The WAL is copied into the file (a checkpoint, with an fsync of each) once it holds this
# much. SQLite's default is a count of pages, 1000: 4 MiB with its 4 KiB pages, but with
# spoolq's 1 KiB pages a checkpoint every 500 or so single puts.
WAL_BYTES = 4 << 20
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


def _check_header(path: str) -> None:
    """FormatError for a non-empty file that does not start as an SQLite database does.

    SQLite itself takes a file of one byte for an empty database and would write a new
    one over it; only a missing or empty file may become a queue file.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(len(_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise EngineError(f"{path}: cannot open the queue: {exc}") from exc
    if head and head != _HEADER:
        raise FormatError(f"{path} is not an SQLite database, so not a spoolq queue file")


def _connect_read_only(path: str, timeout: float) -> sqlite3.Connection:
    """A read-only connection. The path is quoted: a ``?``, ``#`` or ``%`` in it would
    otherwise end the file name of the URI and open another file. It is resolved as the
    kernel resolves it (``link/..`` is the link's target's parent, as a writable open
    finds it), not as text, and has an empty authority whatever slashes lead it."""
    uri = "file://" + quote(os.fsencode(os.path.realpath(path))) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                           timeout=timeout)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as exc:
        # A WAL file needs its -shm file, which a read-only directory cannot get. No
        # process can write the file there either (it could not create its -wal file),
        # so unless one is left over, the file cannot change while it is read.
        if (getattr(exc, "sqlite_errorname", "") != "SQLITE_READONLY_DIRECTORY"
                or os.path.exists(path + "-wal")):
            conn.close()
            raise
        conn.close()
        seen = _signature(path)
        conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None,
                               check_same_thread=False, timeout=timeout, factory=Unlocked)
        conn.signature = seen
    except BaseException:
        conn.close()
        raise
    return conn


def _signature(path: str) -> tuple[int, ...] | None:
    """What changes when a process writes the file: its inode, size and modification time.
    Not its ctime, which changes without a write too: a chmod, a hard link (snapshots), a
    backup tool giving back the atime it had."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class Unlocked(sqlite3.Connection):
    """A read-only connection without SQLite's locks (``immutable=1``), made in a directory
    the process cannot write. SQLite then takes the file for one nobody changes and keeps
    the pages it read; a process that may write there can still open the queue and write,
    after which the pages read mix two states of the file. ``signature`` is the file's
    (see :func:`_signature`) when the connection was made."""

    signature: tuple[int, ...] | None = None


def check_unchanged(conn: object, path: str) -> None:
    """EngineError when ``conn`` reads without locks (:class:`Unlocked`) and another process
    has written the file since it was opened, or has it open for writing (its ``-wal``
    file exists): what was read may be wrong. A new open reads the file as it is."""
    if isinstance(conn, Unlocked) and (
            os.path.exists(path + "-wal") or _signature(path) != conn.signature):
        raise EngineError(
            f"{path} was written by another process while this one read it without "
            "SQLite's locks (the directory is read-only to this process, so it cannot make "
            "the -shm file that locking needs): open the queue again to read it as it is")


def connect(path: str, *, read_only: bool, timeout: float) -> sqlite3.Connection:
    """A connection in autocommit mode (spoolq runs its own BEGIN IMMEDIATE ... COMMIT).

    FormatError, leaving the file as it is, for a file that is not an SQLite database.
    """
    _check_header(path)
    if read_only:
        return _connect_read_only(path, timeout)
    check_directory(path)  # SQLite says only "unable to open database file"
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           timeout=timeout)


def _blank(conn: sqlite3.Connection) -> bool:
    """Whether the database is new: no schema object at all (tables, views, indexes,
    triggers) and no application id or user version another program would set."""
    return bool(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
                and conn.execute("PRAGMA application_id").fetchone()[0] == 0
                and conn.execute("PRAGMA user_version").fetchone()[0] == 0)


def _meta(conn: sqlite3.Connection, key: str) -> bytes | None:
    # As bytes whatever the type: another program (the sqlite3 shell) may write text or a number.
    row = conn.execute("SELECT CAST(value AS BLOB) FROM spoolq_meta WHERE key = ?",
                       (key,)).fetchone()
    return None if row is None else bytes(row[0])


_CREATING_WAIT = 1.0  # seconds a read-only open waits for a blank file's schema


def _wait_for_creator(conn: sqlite3.Connection, path: str) -> None:
    """Wait for the process that is creating the file to commit its schema (it does in one
    transaction, within milliseconds); FormatError when the file stays blank."""
    deadline = time.monotonic() + _CREATING_WAIT
    while time.monotonic() < deadline:
        time.sleep(0.005)
        if not _blank(conn):
            return
    raise FormatError(f"{path} is an empty SQLite database, not a spoolq queue file (a "
                      "queue opened for writing creates its tables)")


def _create(conn: sqlite3.Connection, page_size: int) -> None:
    conn.execute(f"PRAGMA page_size = {page_size}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        if _blank(conn):
            for statement in SCHEMA:
                conn.execute(statement)
            conn.executemany("INSERT INTO spoolq_meta (key, value) VALUES (?, ?)", [
                ("application", _APPLICATION),
                ("format_version", str(FORMAT_VERSION).encode()),
            ])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _locked(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _create_in_turn(conn: sqlite3.Connection, page_size: int, timeout: float) -> None:
    """Create the tables of a blank file, waiting up to ``timeout`` seconds for another
    connection that holds it (another process creating the same file, say): switching a
    blank file to WAL gets no busy wait from SQLite, and fails at once while it is held."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _create(conn, page_size)
            return
        except sqlite3.OperationalError as exc:
            if not _locked(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.005)
        if not _blank(conn):
            return


def set_up(conn: sqlite3.Connection, path: str, *, read_only: bool, synchronous: str,
           page_size: int, timeout: float = 0.0) -> None:
    """Create the tables in a new file (unless ``read_only``, waiting up to ``timeout``
    seconds for a lock on it), check that the file is a spoolq queue file of this format,
    and set WAL mode and ``synchronous``."""
    if _blank(conn) and not read_only:
        _create_in_turn(conn, page_size, timeout)
    if read_only and _blank(conn):
        _wait_for_creator(conn, path)
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
    _check_tables(conn, path)
    if not read_only:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(SYNCHRONOUS[synchronous])
        page = conn.execute("PRAGMA page_size").fetchone()[0]  # the file's, whatever asked
        conn.execute(f"PRAGMA wal_autocheckpoint = {max(WAL_BYTES // page, 1000)}")


_COLUMNS = {  # every column of the spoolq tables, by table (see SCHEMA)
    "spoolq_meta": ("key", "value"),
    "spoolq_queues": ("name", "qno", "last_seq", "ready", "leased", "stored_bytes",
                      "raw_bytes"),
    "spoolq_records": ("id", "visible_at", "attempts", "enqueued_at", "raw_size", "reason",
                       "data"),
    "spoolq_leased": ("id", "owner", "until", "attempts", "enqueued_at", "raw_size", "reason",
                      "data"),
}
# The largest record id of each record table, with its queue's number and the last sequence
# that queue gave out (NULL for a number the file does not give a queue): one statement, so
# one state of the file. Each is a lookup in a b-tree (as scalar subqueries: a max() in a
# compound subquery reads the whole table).
_TOP_IDS = """WITH t(top) AS (VALUES ((SELECT max(id) FROM spoolq_records)),
                              ((SELECT max(id) FROM spoolq_leased)))
    SELECT top, top >> 40, (SELECT last_seq FROM spoolq_queues WHERE qno = top >> 40)
    FROM t WHERE top IS NOT NULL"""


def _check_tables(conn: sqlite3.Connection, path: str) -> None:
    """FormatError for a spoolq table that lost a column or its key (another program
    altered it), CorruptError for records that lie past their queue's last id (its
    counter deleted or set back): the file would open, then fail at some later call, or
    show a queue as empty while its records are in the file."""
    for table, wanted in _COLUMNS.items():
        info = {row[1]: row for row in conn.execute(f"PRAGMA table_info({table})")}
        missing = next((c for c in wanted if c not in info), None)
        if missing is not None:
            raise FormatError(f"{path} is damaged: its table {table} has no column {missing}")
        if "id" in wanted and (str(info["id"][2]).upper() != "INTEGER" or info["id"][5] != 1
                               or sum(1 for row in info.values() if row[5]) != 1):
            raise FormatError(f"{path} is damaged: its table {table} does not key its rows "
                              "by id (INTEGER PRIMARY KEY)")
    for top, qno, last_seq in conn.execute(_TOP_IDS).fetchall():
        seq = top & ((1 << 40) - 1)
        if last_seq is None or seq > last_seq:
            which = ("which the file does not number" if last_seq is None
                     else f"which has given out ids up to {last_seq} only")
            raise CorruptError(f"{path} is damaged: it holds record {seq} of queue number "
                               f"{qno}, {which} (its table spoolq_queues was changed)")


def translate(exc: sqlite3.Error, path: str, what: str) -> EngineError:
    """The spoolq error for a sqlite3 error (the caller raises it ``from exc``)."""
    text = str(exc)
    if _locked(exc):
        return LockTimeout(f"{path}: {what} waited too long for a lock: {text}")
    if "malformed" in text or "corrupt" in text or "Could not decode to UTF-8" in text:
        return CorruptError(f"{path} is damaged: {text}")
    if "readonly" in text:
        return EngineError(f"{path}: {what} needs to write, but the file or its directory is "
                           f"read-only: {text}")
    if "not a database" in text:
        return FormatError(f"{path} is not a spoolq queue file ({text})")
    if "disk I/O error" in text:  # as for the -shm file that a full disk cannot grow
        return EngineError(f"{path}: {what} failed: {text}{full_disk_note(path)}")
    return EngineError(f"{path}: {what} failed: {text}")

_MAX_LENGTH, _LIMIT_LENGTH = 1_000_000_000, 0  # SQLite's default length limit, its limit id


def length_limit(conn: sqlite3.Connection) -> int:
    """The most bytes a string, a blob or a whole row may have on ``conn``: SQLite's length
    limit, 1,000,000,000 unless it was built or set with another."""
    getlimit = getattr(conn, "getlimit", None)  # Python 3.11 on
    if getlimit is None:
        return _MAX_LENGTH
    inside = enter()  # no fork while in SQLite (see _forkguard)
    try:
        return int(getlimit(_LIMIT_LENGTH))
    finally:
        leave(inside)


INHERITED: list[sqlite3.Connection] = []
"""Connections of a parent process, kept here so that they are never closed."""


class Closed:
    """Stands in for the connection of a closed engine: every call raises ClosedError."""

    in_transaction = False

    def __init__(self, path: str) -> None:
        self.path = path

    def execute(self, *args: object) -> Any:
        raise ClosedError(f"the sqlite engine on {self.path} is closed")

    executemany = getlimit = execute


def open_connection(path: str, read_only: bool, timeout: float, synchronous: str,
                    page_size: int) -> sqlite3.Connection:
    """A connection to queue file ``path``, set up (see :func:`set_up`)."""
    try:
        conn = connect(path, read_only=read_only, timeout=timeout)
        try:
            set_up(conn, path, read_only=read_only, synchronous=synchronous,
                   page_size=page_size, timeout=timeout)
        except BaseException:
            conn.close()
            raise
    except UnicodeDecodeError as exc:
        # SQLite's message about a damaged schema quotes its bytes, which sqlite3 then
        # fails to decode.
        raise CorruptError(f"{path} is damaged: its schema does not parse ({exc})") from exc
    return conn


_MAX_TIMEOUT = ((1 << 31) - 1) / 1000  # seconds: the longest busy timeout SQLite takes


def check_settings(synchronous: str, timeout: float, page_size: int) -> float:
    """Check the SQLite engine's settings (ConfigurationError, or EngineError for an
    SQLite too old); return the busy timeout to set, in seconds."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise EngineError(
            f"spoolq needs SQLite 3.35 or newer; this Python has {sqlite3.sqlite_version}")
    if synchronous not in SYNCHRONOUS:
        raise ConfigurationError(
            f"synchronous must be FULL, NORMAL or OFF, not {synchronous!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
            not timeout >= 0:
        raise ConfigurationError(
            f"timeout must be a number of seconds >= 0, not {timeout!r}")
    if type(page_size) is not int or page_size not in PAGE_SIZES:
        raise ConfigurationError(
            f"page_size must be a power of two from 512 to 65536, not {page_size!r}")
    # SQLite counts its busy timeout in milliseconds in a C int: past that, sqlite3 sets
    # no timeout at all, and a write would not wait for a lock.
    return min(timeout, _MAX_TIMEOUT)


class BusyTimeout:
    """A connection's busy timeout, which :meth:`no_wait` turns off: a write that would
    wait for another connection's lock then raises :class:`LockTimeout` at once, its
    transaction rolled back. It is turned on again by :meth:`restore`, which the engine
    calls before each call outside ``no_wait``: so calls made within it one after
    another turn it off once, not at every call."""

    def __init__(self, timeout: float) -> None:
        self._pragma = f"PRAGMA busy_timeout = {int(timeout * 1000)}"
        self.off = False  # the connection's timeout is 0
        self._within = False
        self._conn: Any = None  # the connection of the last no_wait()

    def no_wait(self, conn: sqlite3.Connection) -> BusyTimeout:
        """A context manager (this object, for ``conn``): a class rather than a generator,
        as a call made on an event loop enters it at each put and get."""
        self._conn = conn
        return self

    def __enter__(self) -> None:
        if not self.off:
            inside = enter()  # no fork while in SQLite (see _forkguard)
            try:
                self._conn.execute("PRAGMA busy_timeout = 0")
            finally:
                leave(inside)
            self.off = True
        self._within = True

    def __exit__(self, *exc: object) -> None:
        self._within = False

    def restore(self, conn: sqlite3.Connection) -> None:
        """Turn the timeout on again, unless within :meth:`no_wait`."""
        if not self._within:
            conn.execute(self._pragma)
            self.off = False
