"""A batch of the PostgreSQL engine sent in statements that PostgreSQL accepts, and the
largest record it stores."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from psycopg import errors as pg_errors
from psycopg import sql

from ._pgpool import Conn
from .base import never_given

__all__ = ["MAX_RECORD_BYTES", "STATEMENT_BYTES", "atomic", "check_given", "check_sizes",
           "parts"]

MAX_RECORD_BYTES = (1 << 30) - (1 << 16)
"""The largest record the engine stores: PostgreSQL keeps a value, and receives a
message, of at most 1 GiB; 64 KiB are left for what else a statement sends."""

# Records a statement sends at most, in bytes, unless it sends one alone: a whole batch
# in one message of more than 1 GiB makes the server close the connection.
STATEMENT_BYTES = 64 << 20


def check_sizes(queue: str, records: Sequence[bytes], what: str) -> None:
    """ValueError, naming its size, for a record larger than :data:`MAX_RECORD_BYTES`."""
    largest = max(map(len, records), default=0)
    if largest > MAX_RECORD_BYTES:
        raise ValueError(
            f"cannot {what} a record of {largest} bytes into queue {queue!r}: PostgreSQL "
            f"stores at most {MAX_RECORD_BYTES} bytes in one value; nothing was stored")


def check_given(conn: Conn, last_id: sql.Composed, next_id: sql.Composed, schema: str,
                queue: str, ids: Sequence[int]) -> None:
    """ValueError for a ``restore`` of an id that the records' identity never gave out
    (``last_id`` reads the last one it did; ``next_id`` inserts a row, rolled back, to
    learn it where the role may not read the identity's sequence)."""
    try:
        row = conn.execute(last_id, {"schema": schema}).fetchone()
        last = int(row[0]) if row is not None else 0
    except pg_errors.InsufficientPrivilege:
        # Granted the tables alone: reading the sequence is refused, inserting is not.
        with conn.transaction(force_rollback=True):
            row = conn.execute(next_id, {"queue": queue}).fetchone()
        last = int(row[0]) - 1 if row is not None else 0
    never = next((i for i in ids if not 0 < i <= last), None)
    if never is not None:
        raise never_given(queue, never)


def parts(queue: str, records: Sequence[bytes], what: str) -> list[slice]:
    """Split a batch into runs of records that one statement can send; ValueError as
    :func:`check_sizes` says."""
    check_sizes(queue, records, what)
    runs: list[slice] = []
    start = size = 0
    for k, record in enumerate(records):
        length = len(record)
        if k > start and size + length > STATEMENT_BYTES:
            runs.append(slice(start, k))
            start, size = k, 0
        size += length
    runs.append(slice(start, len(records)))
    return runs


def atomic(conn: Conn, runs: Sequence[slice]) -> AbstractContextManager[Any]:
    """A transaction around a batch sent in several statements; none around one."""
    return conn.transaction() if len(runs) > 1 else nullcontext()
