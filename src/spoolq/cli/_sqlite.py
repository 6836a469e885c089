"""SQLite-only maintenance that the engine protocol has no call for.

``verify`` asks SQLite to check its own pages and ``compact`` runs ``VACUUM``.
Both use a connection of their own next to the engine's; the file has been
opened (and so checked to be a spoolq queue) through the engine first.
"""

from __future__ import annotations

import os
import sqlite3
from urllib.parse import quote

from ..errors import CorruptError, EngineError, LockTimeout

__all__ = ["quick_check", "vacuum"]


def _translate(path: str, what: str, exc: sqlite3.Error) -> EngineError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return LockTimeout(f"{path}: {what} waited too long for a lock: {text}")
    if "malformed" in text or "corrupt" in text or "not a database" in text:
        return CorruptError(f"{path} is damaged: {text}")
    return EngineError(f"{path}: {what} failed: {text}")


def quick_check(path: str) -> list[str]:
    """SQLite's ``PRAGMA quick_check`` on a read-only connection: [] when the pages are sound,
    else up to 20 lines naming what is wrong. It reads every page and changes nothing."""
    # Quoted as bytes: a name that is not UTF-8 cannot be encoded as text. Resolved as the
    # engine resolves it (link/.. as the kernel takes it).
    uri = "file://" + quote(os.fsencode(os.path.realpath(path))) + "?mode=ro"
    try:
        try:
            rows = _quick_check(uri)
        except sqlite3.OperationalError as exc:
            # A WAL file needs its -shm file, which a read-only folder cannot get; no
            # process can write the file there either (it could not make its -wal), so
            # unless one is left over it is read as one nobody changes, as the engine
            # reads it.
            if (getattr(exc, "sqlite_errorname", "") != "SQLITE_READONLY_DIRECTORY"
                    or os.path.exists(path + "-wal")):
                raise
            rows = _quick_check(uri + "&immutable=1")
    except sqlite3.Error as exc:
        return [str(_translate(path, "quick_check", exc))]
    found = [str(row[0]) for row in rows]
    return [] if found == ["ok"] else [f"SQLite: {line}" for line in found]


def _quick_check(uri: str) -> list[tuple[str]]:
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        return conn.execute("PRAGMA quick_check(20)").fetchall()
    finally:
        conn.close()


def vacuum(path: str, *, timeout: float = 10.0) -> None:
    """Rewrite the file without its free pages (``VACUUM``) and empty the WAL.

    Waits up to ``timeout`` seconds for other connections' writes; raises
    :class:`LockTimeout` after that.
    """
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=timeout)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _translate(path, "VACUUM", exc) from exc
