"""A batch of the PostgreSQL engine sent in statements that PostgreSQL accepts (and
appended to spoolq's own queues one at a time), the largest record it stores, the checks
of the values it is given (and of those that name nothing it can hold), and the deltas it
adds to the counter stripes."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from psycopg import errors as pg_errors
from psycopg import sql

from ._checks import (
    as_meta_key,
    checked_ids,
    checked_owner,
    checked_size_types,
    int_deliveries,
    lease_owner_fits,
    names_nothing_stored,
)
from ._pgpool import Conn
from .base import (
    StoredRecord,
    as_bytes,
    as_queue_name,
    as_records,
    as_text,
    checked_records,
    never_given,
    refuse_nan,
)

__all__ = ["MAX_BIGINT", "MAX_QUEUE_NAME_BYTES", "MAX_RECORD_BYTES", "STATEMENT_BYTES",
           "append_runs", "atomic", "check_given", "check_sizes", "checked_batch",
           "checked_lease_owner", "checked_meta", "checked_move_ids", "checked_name",
           "checked_reason", "checked_restore", "counter_deltas", "held", "holds_nothing",
           "names_nothing", "parts"]

MAX_BIGINT = (1 << 63) - 1
"""The largest id (a ``bigint``); no record has a larger one."""

_MAX_INTEGER = (1 << 31) - 1  # the largest attempts (an ``integer``)
_ONLY_INTS = {int}

MAX_RECORD_BYTES = (1 << 30) - (1 << 16)
"""The largest record the engine stores: PostgreSQL keeps a value, and receives a
message, of at most 1 GiB; 64 KiB are left for what else a statement sends."""

MAX_QUEUE_NAME_BYTES = 2048
"""The longest queue name the engine stores records under, in bytes of UTF-8; the name
of its dead letters (``<name>.dead``) takes 5 more. A btree index entry holds at most
some 2.7 kB (a third of a page): the name and an id go into the key of every record."""

_DEAD = ".dead"

_OWN = "__spoolq_"  # spoolq's own queues (its zstd dictionaries), as settings reserves them

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


def append_runs(conn: Conn, append: sql.Composed, schema: str, queue: str,
                records: Sequence[bytes], raw_sizes: Sequence[int], runs: Sequence[slice],
                params: dict[str, Any]) -> list[int]:
    """Append a batch to ``queue`` of ``schema``, each of its ``runs`` by one ``append``
    statement (run with ``params``), all in one transaction; the ids the records got.

    Appends to one of spoolq's own queues take turns, each in a transaction that takes
    a lock of the queue before drawing ids: ids are drawn before commit, so two appends
    at once could become visible in the other order, and a reader that saw the later
    id alone would take it for the first. A zstd dictionary's number is its place in its
    queue, so two dictionaries could get one number."""
    ids: list[int] = []
    own = queue.startswith(_OWN)
    with conn.transaction() if own else atomic(conn, runs):
        if own:
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                         (f"spoolq append {schema} {queue}",))
        for run in runs:
            row = conn.execute(append, {**params, "data": list(records[run]),
                                        "raw": list(raw_sizes[run])}).fetchone()
            ids.extend(row[0] if row is not None else ())
    return ids


# PostgreSQL would cast what is not bytes to bytea or text on its own terms: a str record's
# backslashes read as escapes ("\\x41" stored as b"A"), a bytes name kept as the text of its
# hex escape. So the values are checked as every engine checks them, before anything is sent.

def _no_nul(text: str, what: str) -> str:
    """``text``, or ValueError naming ``what`` when it holds NUL, which no PostgreSQL text
    holds."""
    if "\0" in text:
        raise ValueError(f"{what} holding NUL cannot be stored by the PostgreSQL engine, "
                         f"whose text holds none; nothing was changed")
    return text


def names_nothing(queue: object) -> bool:
    """Whether ``queue`` names no queue the engine can hold: not a str (PostgreSQL would
    fail to compare b"q" with a name), holding NUL, or not UTF-8 (a surrogate, which psycopg
    cannot send). Calls that only read or settle then find nothing, as in a queue never
    used."""
    return not isinstance(queue, str) or "\0" in queue or names_nothing_stored(queue)


def holds_nothing(owner: object) -> bool:
    """Whether ``owner`` can hold no lease: not a str, holding NUL, or not UTF-8 (a lone
    surrogate), none of which a take accepts or PostgreSQL compares."""
    if lease_owner_fits(owner):
        return "\0" in owner  # type: ignore[operator]
    if not isinstance(owner, str) or "\0" in owner:
        return True
    try:
        owner.encode()
    except UnicodeEncodeError:
        return True
    return False


def checked_lease_owner(owner: object) -> str:
    """The owner of a take's lease: :func:`~spoolq.engines._checks.checked_owner`, and
    ValueError when it holds NUL."""
    if not lease_owner_fits(owner):
        checked_owner(owner)
    return _no_nul(owner, "a lease owner")  # type: ignore[arg-type]


def checked_reason(reason: object) -> str:
    """The reason of a ``release``: TypeError unless it is a str, ValueError when it holds
    NUL."""
    if type(reason) is not str:
        as_text(reason, "a reason")
    return _no_nul(reason, "a reason")  # type: ignore[arg-type]


def held(deliveries: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """The ids and attempts of the deliveries of an ``ack`` or a ``release`` that can be
    leased: each of an int id and attempts (a bool as its int) in the range of their
    columns (others hold no lease: (1, "1") or (1.0, 1) would be cast to the delivery
    (1, 1), a larger int fail the statement), each named once (a release would bury a
    delivery named twice twice)."""
    pairs = dict.fromkeys((i, a) for i, a in int_deliveries(deliveries)
                          if 0 < i <= MAX_BIGINT and 0 < a <= _MAX_INTEGER)
    return [p[0] for p in pairs], [p[1] for p in pairs]


def checked_move_ids(ids: object) -> list[int] | None:
    """The ids of a ``move`` (see :func:`~spoolq.engines._checks.checked_ids`) as a list
    of the ints of ids a record can have (a bool as its int)."""
    given = checked_ids(ids)  # type: ignore[arg-type]
    if given is None:
        return None
    if given and (not {*map(type, given)} <= _ONLY_INTS or min(given) <= 0
                  or max(given) > MAX_BIGINT):
        return [int(i) for i in given if 0 < i <= MAX_BIGINT]
    return list(given)


def checked_name(queue: object) -> str:
    """``queue`` as the name of a queue to store records under: TypeError unless it is a
    str, ValueError when it is longer than :data:`MAX_QUEUE_NAME_BYTES` (the name of a
    queue's dead letters, 5 bytes more, is taken too) or holds NUL."""
    name = _no_nul(as_queue_name(queue), "a queue name")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size - (len(_DEAD) if name.endswith(_DEAD) else 0) > MAX_QUEUE_NAME_BYTES:
        raise ValueError(
            f"a queue name of {size} bytes of UTF-8 ({name[:40]!r}...) is too long: the "
            f"PostgreSQL engine takes names of at most {MAX_QUEUE_NAME_BYTES} bytes (and "
            f"their dead letters' ending in {_DEAD!r}); nothing was stored")
    return name


def checked_batch(queue: str, records: Sequence[bytes],
                  raw_sizes: Sequence[int]) -> tuple[Sequence[bytes], Sequence[int]]:
    """The records and raw sizes of an ``append`` to ``queue``: TypeError for a raw size
    that is not an int, a name that is not a str or a record that is not bytes-like,
    ValueError for a name too long (see :func:`checked_name`); bytes-like records other
    than bytes are copied, a bool raw size taken as its int."""
    if type(raw_sizes[0]) is not int or len(raw_sizes) > 1:
        checked_size_types(raw_sizes)
        if not {*map(type, raw_sizes)} <= _ONLY_INTS:
            raw_sizes = [int(size) for size in raw_sizes]
    checked_name(queue)
    return as_records(records), raw_sizes


def checked_restore(where: str, queue: str,
                    records: Sequence[StoredRecord]) -> list[StoredRecord]:
    """The records of a ``restore`` to ``queue``, each field checked (see
    ``base.checked_records``): TypeError for a name that is not a str, EngineError for an
    enqueue time that is NaN (``where`` names the store), ValueError for a name too long."""
    checked_name(queue)
    checked = checked_records(records)
    for rec in checked:
        refuse_nan(where, "restore", f"the enqueue time of record {rec.id}", rec.enqueued_at)
        if rec.reason is not None:
            _no_nul(rec.reason, "a reason")
    if not all(type(r.id) is int and type(r.raw_size) is int and type(r.attempts) is int
               for r in checked):  # a bool: psycopg would send it as one
        checked = [r._replace(id=int(r.id), raw_size=int(r.raw_size), attempts=int(r.attempts))
                   for r in checked]
    return checked


def checked_meta(key: str, value: bytes) -> dict[str, object]:
    """The parameters of a ``set_meta``: TypeError unless ``key`` is a str and ``value``
    bytes-like, ValueError when ``key`` holds NUL."""
    return {"key": _no_nul(as_meta_key(key), "a metadata key"),
            "value": as_bytes(value, "a metadata value")}


def counter_deltas(rows: Sequence[tuple[str, int, int, int, int]],
                   slot: int) -> dict[str, list[Any]] | None:
    """The parameters of the statement adding (queue, ready, leased, stored, raw) deltas to
    the stripe ``slot`` of each queue, or None when they add nothing: one row per queue,
    since an upsert may not change a row twice (a move to itself), sorted by queue so two
    transactions touching the same stripes lock them in the same order."""
    merged: dict[str, tuple[int, int, int, int]] = {}
    for queue, ready, leased, stored, raw in rows:
        was = merged.get(queue, (0, 0, 0, 0))
        merged[queue] = (was[0] + ready, was[1] + leased, was[2] + stored, was[3] + raw)
    kept = sorted((queue, *deltas) for queue, deltas in merged.items() if any(deltas))
    if not kept:
        return None
    return {"queues": [r[0] for r in kept], "slots": [slot] * len(kept),
            "ready": [r[1] for r in kept], "leased": [r[2] for r in kept],
            "stored": [r[3] for r in kept], "raw": [r[4] for r in kept]}
