"""How the LMDB engine lays out its keys and values, and how LMDB's errors map to spoolq's.

All integers are big-endian, so byte order is numeric order and an LMDB
cursor walks a queue's records by id.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from itertools import repeat

import lmdb

from ..errors import CorruptError, EngineError, FormatError
from ._checks import MAX_OWNER_BYTES, as_queue_name, checked_owner
from ._diskspace import full_disk_note
from .base import Lease, StoredRecord

__all__ = ["DB_NAMES", "DELAYED", "KEY", "MAX_ID", "MAX_NAME", "MAX_NEW_NAME", "MAX_OWNER",
           "QUEUE", "U32", "U64", "V1_DB_NAMES", "V2_DB_NAMES", "QueueRow", "held_by",
           "lease_head", "lease_reader", "name_key", "new_name_key", "owner_key", "pack",
           "pack_new_many", "queue_row", "translate", "unpack", "unpack_leased",
           "unpack_plain", "with_attempts"]

DB_NAMES = (b"meta", b"counters", b"queues", b"ready", b"delayed", b"leased", b"delayed_ids",
            b"lease_owners")
#: The sub-databases of a format 1 file, which has no ``delayed_ids`` index yet.
V1_DB_NAMES = DB_NAMES[:6]
#: Those of a format 2 file, which has no ``lease_owners`` yet.
V2_DB_NAMES = DB_NAMES[:7]
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
KEY = struct.Struct(">IQ")  # queue number, record id
MAX_ID = (1 << 64) - 1  # the largest id a key holds
DELAYED = struct.Struct(">IdQ")  # queue number, visible_at (positive doubles sort as bytes), id
QUEUE = struct.Struct(">Iqqqqd")  # number, ready, leased, stored bytes, raw bytes, soonest
_QUEUE_2 = struct.Struct(">Iqqqq")  # the row of formats 1 and 2, without soonest
_RECORD = struct.Struct(">QIdi")  # raw size, attempts, enqueued_at, reason length (-1: None)
_LEASE = struct.Struct(">dH")  # until, owner length
_ATTEMPTS = struct.Struct(">I")
_ATTEMPTS_AT = 8  # offset of attempts in _RECORD
_new_record = partial(tuple.__new__, StoredRecord)  # without the generated __new__


@dataclass(slots=True)
class QueueRow:
    """A queue's number (its key prefix) and counts, as kept in the ``queues`` sub-database,
    and ``soonest``: no lease of the queue ends before it (format 3), so an ``expire``
    before then has nothing to read. Takes lower it; an ``expire`` that reads the leases
    sets it to the earliest end left. ``stale``: the row has the layout of formats 1 and 2,
    without ``soonest`` (-inf, which tells nothing): a process of an earlier release that
    opened the file before it was upgraded wrote it, and may have taken or settled leases
    that ``lease_owners`` does not count."""

    number: int
    ready: int = 0
    leased: int = 0
    stored: int = 0
    raw: int = 0
    soonest: float = math.inf
    stale: bool = False

    def packed(self) -> bytes:
        return QUEUE.pack(self.number, self.ready, self.leased, self.stored, self.raw,
                          self.soonest if self.leased else math.inf)


def queue_row(value: bytes) -> QueueRow:
    """The row stored as ``value``; :class:`struct.error` if it is neither of the layouts."""
    if len(value) == _QUEUE_2.size:
        number, ready, leased, stored, raw = _QUEUE_2.unpack(value)
        return QueueRow(number, ready, leased, stored, raw, -math.inf, stale=True)
    return QueueRow(*QUEUE.unpack(value))


MAX_NAME = 511  # the longest key LMDB takes (its default MDB_MAXKEYSIZE), so queue name
_DEAD = b".dead"  # what a queue's name gains in the name of its dead letters' queue
#: The longest name of a queue created by a write: its dead letters' queue's name fits a
#: key too (a name ending in ".dead", a dead letters' queue, may be up to MAX_NAME).
MAX_NEW_NAME = MAX_NAME - len(_DEAD)


def name_key(name: object) -> bytes | None:
    """The key of queue ``name`` in ``queues``; None for a name no queue can have (not a
    str, empty, too long for a key, not writable as UTF-8), which reads find empty. A str
    subclass (a str enum) is its text, the key it was stored under."""
    if not isinstance(name, str):
        return None
    try:
        key = name.encode()
    except UnicodeEncodeError:
        return None
    return key if 0 < len(key) <= MAX_NAME else None


def new_name_key(name: object) -> bytes:
    """The key of a queue that records are stored in: TypeError when ``name`` is not a str,
    ValueError when it is empty or longer than a key, or too long for the name of its
    dead letters' queue to be a key (a queue of an earlier release may have such a name:
    it is read and written, but burying a record in its dead letters is refused)."""
    key = as_queue_name(name).encode()
    if not 0 < len(key) <= MAX_NAME:
        raise ValueError(f"a queue name must be 1 to {MAX_NAME} bytes of UTF-8 in an LMDB "
                         f"queue, not {len(key)}; nothing was changed")
    if len(key) > MAX_NEW_NAME and not key.endswith(_DEAD):
        raise ValueError(
            f"a queue name of {len(key)} bytes of UTF-8 is refused in an LMDB queue: its "
            f"dead letters' queue, the name and '.dead', would be {len(key) + len(_DEAD)} "
            f"bytes, more than the {MAX_NAME} an LMDB key holds; a queue name takes 1 to "
            f"{MAX_NEW_NAME} bytes ({MAX_NAME} ending in '.dead'); nothing was changed")
    return key


def pack(rec: StoredRecord, attempts: int | None = None) -> bytes:
    """A record's value: header, reason, data (``attempts`` replaces the record's own)."""
    reason = None if rec.reason is None else rec.reason.encode()
    header = _RECORD.pack(rec.raw_size, rec.attempts if attempts is None else attempts,
                          rec.enqueued_at, -1 if reason is None else len(reason))
    return header + (reason or b"") + rec.data


def pack_new_many(records: Sequence[bytes], raw_sizes: Sequence[int], now: float) -> list[bytes]:
    """The values of records just put: no attempts, no reason."""
    k = len(records)
    heads = map(_RECORD.pack, raw_sizes, repeat(0, k), repeat(now, k), repeat(-1, k))
    return list(map(bytes.__add__, heads, records))


def unpack_plain(ident: int, value: bytes) -> StoredRecord | None:
    """The record stored as ``value`` when it has no reason (a record as put), else None
    (then :func:`unpack` reads it). :class:`struct.error` if ``value`` is too short."""
    raw_size, attempts, enqueued_at, reason_len = _RECORD.unpack_from(value)
    if reason_len >= 0:
        return None
    return _new_record((ident, value[_RECORD.size:], raw_size, attempts, enqueued_at, None))


def unpack(path: str, ident: int, value: bytes, bump: int = 0) -> StoredRecord:
    """The record stored as ``value``, its attempts raised by ``bump``."""
    try:
        raw_size, attempts, enqueued_at, reason_len = _RECORD.unpack_from(value)
        start = _RECORD.size
        reason = None if reason_len < 0 else value[start:start + reason_len].decode()
    except (struct.error, UnicodeDecodeError) as exc:
        raise CorruptError(f"{path}: record {ident} is damaged: {exc}") from exc
    return StoredRecord(ident, value[start + max(reason_len, 0):], raw_size, attempts + bump,
                        enqueued_at, reason)


def with_attempts(value: bytes, attempts: int) -> bytes:
    """A record's value (as made by :func:`pack`) with its attempts replaced."""
    return value[:_ATTEMPTS_AT] + _ATTEMPTS.pack(attempts) + value[_ATTEMPTS_AT + _ATTEMPTS.size:]


MAX_OWNER = (1 << 16) - 1  # the longest lease owner in bytes: its length takes 16 bits


def lease_head(lease: Lease) -> bytes:
    """What precedes the record's value in a leased record's value: until, then owner.
    TypeError or ValueError, as :func:`checked_owner` raises them, for an owner that is
    not a str or is longer than any engine takes (a lease stored earlier under an owner of
    up to :data:`MAX_OWNER` bytes is still read and settled)."""
    owner = checked_owner(lease.owner).encode()
    return _LEASE.pack(lease.until, len(owner)) + owner


def lease_reader(owner: bytes) -> struct.Struct:
    """Reads the headers of a record leased by an owner as long as ``owner``: until, owner
    length, owner, raw size, attempts, enqueued_at, reason length."""
    return struct.Struct(f">dH{len(owner)}sQIdi")


def held_by(value: bytes, owner: bytes, reader: struct.Struct) -> tuple[int, int, int] | None:
    """(attempts, raw size, stored data size) of a leased record's value if ``owner``
    (read with ``reader`` from :func:`lease_reader`) holds it, else None. Reads only
    the headers."""
    try:
        _, owner_len, holder, raw_size, attempts, _, reason_len = reader.unpack_from(value)
    except struct.error:
        return None  # shorter than any record leased by this owner
    if owner_len != len(owner) or holder != owner:
        return None
    return attempts, raw_size, len(value) - reader.size - max(reason_len, 0)


def unpack_leased(path: str, ident: int, value: bytes) -> tuple[str, float, StoredRecord]:
    """(owner, until, record) of a leased record's value."""
    try:
        until, owner_len = _LEASE.unpack_from(value)
        start = _LEASE.size
        owner = value[start:start + owner_len].decode()
    except (struct.error, UnicodeDecodeError) as exc:
        raise CorruptError(f"{path}: the lease of record {ident} is damaged") from exc
    return owner, until, unpack(path, ident, value[start + owner_len:])


def owner_key(number: int, owner: bytes) -> tuple[bytes, bytes]:
    """The key in ``lease_owners`` of the count of queue ``number``'s leases ``owner``
    holds, and what follows the count in its value: nothing, or for an owner longer than
    :data:`MAX_OWNER_BYTES` (stored by an earlier version; too long for a key) the owner,
    keyed by 0xFF (never a byte of UTF-8) and its SHA-256."""
    if len(owner) <= MAX_OWNER_BYTES:
        return U32.pack(number) + owner, b""
    return U32.pack(number) + b"\xff" + hashlib.sha256(owner).digest(), owner


def translate(exc: lmdb.Error, path: str, what: str) -> EngineError:
    """The spoolq error for an LMDB error (the caller raises it ``from exc``)."""
    if isinstance(exc, (lmdb.InvalidError, lmdb.VersionMismatchError, lmdb.IncompatibleError)):
        return FormatError(f"{path} is not a spoolq LMDB queue file ({exc})")
    if isinstance(exc, (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.PanicError,
                        lmdb.BadChecksumError)):
        return CorruptError(f"{path} is damaged: {exc}")
    if isinstance(exc, lmdb.ReadersFullError):
        return EngineError(
            f"{path}: {what} failed: every slot of LMDB's reader table ({path}-lock) is "
            "taken by reads of live processes: open the queue with a larger max_readers "
            "engine option (the table takes it when no process has the file open), or from "
            "fewer processes at once")
    if isinstance(exc, lmdb.ReadonlyError):
        return EngineError(f"{path}: {what} needs to write, but the file is read-only")
    if "already open in this process" in str(exc):
        # spoolq shares one environment per file within a process, so this is a child forked
        # while its parent had the file open: LMDB forbids reusing the parent's environment.
        return EngineError(f"{path} was open when this process was forked; open LMDB queues "
                           "after forking, or start processes with the 'spawn' method")
    if "Input/output error" in str(exc):  # LMDB's EIO for a write that came up short
        return EngineError(f"{path}: {what} failed: {exc}{full_disk_note(path)}")
    return EngineError(f"{path}: {what} failed: {exc}")
