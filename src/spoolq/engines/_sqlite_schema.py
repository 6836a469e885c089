"""The tables of a spoolq SQLite file (see docs/file-format.md)."""

from __future__ import annotations

__all__ = ["SCHEMA"]

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
