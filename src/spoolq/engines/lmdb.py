"""The LMDB engine: a memory-mapped B+tree file that many processes share safely.

Layout. ``path`` is the data file itself (LMDB's ``subdir=False``), so a queue is one
file like an SQLite one; LMDB keeps its reader table in ``<path>-lock`` beside it. The
file holds eight named sub-databases: ``meta`` (``application``, ``format_version``,
codec settings); ``counters`` (the id and queue-number counters); ``queues`` (queue
name -> its number, its counts and the earliest end of its leases, changed in the same
transaction as the records, so :meth:`counts` is O(1) and right across processes);
``ready`` (queue number (4 bytes) + record id (8 bytes, big-endian) -> record, so a
cursor walks a queue in FIFO order); ``delayed`` (queue number + visible_at + id ->
record released with a delay: each ``take`` first moves the ones now due back to
``ready``, stopping at the first that is not, so a delayed record at the head never
makes a take scan the queue); ``leased`` (queue number + id -> lease (until, owner) +
record); ``delayed_ids`` (queue number + id -> the record's key in ``delayed``, so
``peek`` and ``move`` walk delayed records in id order with a cursor; format 2);
``lease_owners`` (how many records each owner holds; format 3, with the earliest lease
end: see :mod:`._lmdbowners`). A file of an earlier format is upgraded when opened for
writing. Ids come from one counter for the whole file, written in the same transaction
as the records: they only grow and are never reused.

Costs. Each call is one LMDB transaction; readers never block the writer or each other,
and writers from every process take turns on LMDB's own lock. ``take``, ``ack`` and
``append`` are O(log n) per record; ``expire`` reads nothing before the queue's earliest
lease end, and every lease of the queue after it (or when given owners that hold some),
``owners`` one entry per owner, ``peek_leased`` the leased records up to the last it
returns. Records are read through cursors, never all at once. The map (LMDB's view of
the file) doubles whenever a write does not fit; the file grows only with the data, and
freed pages are reused. What each ``durability`` keeps through a crash or a power cut:
docs/engines.md.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any, TypeVar, cast

import lmdb

from ..errors import CorruptError, EngineError
from . import _lmdbformat as fmt
from . import _lmdbopen as opening
from . import _lmdbwalk as walk
from ._checks import (
    as_bytes,
    as_int,
    as_queue_name,
    as_records,
    checked_size_types,
    meta_key_bytes,
)
from ._lmdblease import LeaseSettling
from ._lmdbmaintain import Maintaining
from ._lmdbowners import LeaseOwners
from ._shared import SharedEngine, check_directory
from .base import (
    Counts,
    Lease,
    LeasedRecord,
    PageEnds,
    StoredRecord,
    batch_given,
    check_window,
    checked_records,
    distinct_ids,
    never_given,
    nothing_visible,
    refuse_nan,
    restore_refused,
)

__all__ = ["LMDBEngine"]

log = logging.getLogger("spoolq")

if TYPE_CHECKING:
    Txn = lmdb.Transaction[bytes]
    Db = lmdb._Database

T = TypeVar("T")
_MAX_GROWTH = 40
_data, _raw_size = itemgetter(1), itemgetter(2)


class _LMDBStore(LeaseSettling, Maintaining):
    """One LMDB environment; see the module docstring."""

    name = "lmdb"

    def __init__(self, path: str, *, read_only: bool, sync: bool, metasync: bool,
                 map_size: int, max_readers: int) -> None:
        # LMDB keeps its lock beside the name it opens: a process opening the file through
        # a symlink must find the lock of every other, so it opens the file itself.
        self.path = os.path.realpath(path) if os.path.islink(path) else path
        self._read_only, self._sync, self._metasync = read_only, sync, metasync
        self._max_readers, self._unlocked = max_readers, False  # _unlocked: see _alone
        self._pages = PageEnds()  # valid for one snapshot: keyed by the read txn's id
        if not read_only:
            check_directory(self.path)  # LMDB would say it needs write access to the file
        with opening.no_lock_file_left(self.path):
            self._open(map_size)

    def _open(self, map_size: int) -> None:
        """Open the environment with a map of ``map_size`` bytes, and its sub-databases."""
        self._env = self._environment(map_size)
        self._unlocked = not self._env.flags()["lock"]
        self._psize = self._env.stat()["psize"]
        self._covered = 0  # pages the file was last seen to hold (it only grows)
        try:
            layout = opening.open_layout(self._env, self.path, self._read_only, self._write)
        except BaseException:
            self._env.close()
            raise
        self._meta, self._counters, self._queues = layout.meta, layout.counters, layout.queues
        self._ready, self._delayed, self._leased = layout.ready, layout.delayed, layout.leased
        self._ids, self._owners = layout.ids, layout.owners

    def _environment(self, map_size: int) -> lmdb.Environment:
        """The environment; without LMDB's lock for a reader that cannot use it."""
        if not self._unlocked:
            try:
                return opening.open_environment(
                    self.path, read_only=self._read_only, sync=self._sync,
                    metasync=self._metasync, map_size=map_size, max_readers=self._max_readers)
            except EngineError as exc:
                if type(exc) is not EngineError or (found := opening.unusable(
                        self.path, self._read_only, exc.__cause__)) is None:
                    raise
                if not found[0]:
                    raise EngineError(found[1]) from exc
                log.info("spoolq: %s: reading it without LMDB's lock", found[1])
        return opening.open_unlocked(self.path, map_size)

    def _index(self) -> Db:
        """The ``delayed_ids`` sub-database, which every writable handle has."""
        if self._ids is None:
            raise EngineError(f"{self.path}: format 1 file opened read-only cannot be written")
        return self._ids

    def _leases(self) -> LeaseOwners:
        """The ``lease_owners`` sub-database, which every writable handle has."""
        if self._owners is None:
            raise EngineError(f"{self.path}: a file of an earlier format opened read-only "
                              "cannot be written")
        return self._owners

    # ---- transactions and errors --------------------------------------------------------

    def _write(self, what: str, body: Callable[[Txn], T]) -> T:
        """Run ``body`` in one write transaction, growing the map while it does not fit."""
        for _ in range(_MAX_GROWTH):
            try:
                with self._env.begin(write=True) as txn:
                    result = body(txn)
            except lmdb.MapFullError:
                if opening.clear_stale_readers(self._env, self.path):
                    continue  # the pages their snapshots held can be reused: no growth
                old = self._env.info()["map_size"]
                self._resize(what, old * 2)
                log.info("spoolq: %s: the LMDB map was full; grew it from %d to %d bytes",
                         self.path, old, old * 2)
            except lmdb.MapResizedError:
                self._resize(what, 0)  # adopt the size another process grew the map to
            except lmdb.Error as exc:
                raise fmt.translate(exc, self.path, what) from exc
            else:  # committed: never run body again, whatever the cover meets
                covered = opening.cover_after_commit(self._env, self.path, what,
                                                     self._covered, self._psize)
                if covered > self._covered:  # the file grew: no stale reader may be why
                    opening.clear_stale_readers(self._env, self.path)
                self._covered = covered
                return result
        raise EngineError(f"{self.path}: {what} did not fit even after growing the map to "
                          f"{self._env.info()['map_size']} bytes")

    def _read(self, what: str, body: Callable[[Txn], T]) -> T:
        """Run ``body`` in one read transaction (without LMDB's lock, see :meth:`_alone`)."""
        for _ in range(_MAX_GROWTH):  # another process may grow the map again meanwhile
            try:
                self._alone(what)
                with self._env.begin() as txn:
                    try:
                        return body(txn)
                    finally:  # pages a writer reused may have made body fail, or read wrong
                        self._alone(what, txn)
            except lmdb.MapResizedError:
                self._resize(what, 0)
            except lmdb.Error as exc:
                if not (isinstance(exc, lmdb.ReadersFullError)
                        and opening.clear_stale_readers(self._env, self.path)):
                    raise fmt.translate(exc, self.path, what) from exc
        raise EngineError(f"{self.path}: {what} failed: the map kept being resized")

    def _alone(self, what: str, txn: Txn | None = None) -> None:
        """Read without LMDB's lock (and its reader table, which keeps writers off the pages
        read), raise if another process opened the queue, or committed twice since ``txn``."""
        if self._unlocked and (opening.lock_held(self.path + "-lock") or (
                txn is not None and self._env.info()["last_txnid"] > txn.id() + 1)):
            raise EngineError(f"{self.path}: {what} failed: another process opened the queue, "
                              f"which this one reads without LMDB's lock ({self.path}-lock "
                              "cannot be written): read it once no process has it open")

    def _resize(self, what: str, size: int) -> None:
        """Set the map to ``size`` bytes (0: the size another process grew it to).

        When the map cannot be that large (the address space is limited, say), LMDB can no
        longer use the environment: it is opened again at its old size, and ``what``
        fails with an EngineError, having written nothing."""
        old = self._env.info()["map_size"]
        try:
            self._env.set_mapsize(size)
        except lmdb.Error as exc:
            self._env.close()
            self._open(old)
            wanted = f"{size} bytes" if size else "the size another process grew it to"
            raise EngineError(f"{self.path}: {what} failed: the LMDB map could not grow from "
                              f"{old} bytes to {wanted} ({exc}); nothing was written") from exc

    # ---- records and queues -------------------------------------------------------------

    def _record(self, ident: int, value: bytes) -> StoredRecord:
        return fmt.unpack(self.path, ident, value)

    def _leased_record(self, ident: int, value: bytes) -> tuple[str, float, StoredRecord]:
        return fmt.unpack_leased(self.path, ident, value)

    def _queue(self, txn: Txn, name: str) -> fmt.QueueRow | None:
        key = fmt.name_key(name)
        value = None if key is None else txn.get(key, db=self._queues)
        if value is None:
            return None
        try:
            return fmt.queue_row(value)
        except struct.error as exc:
            raise CorruptError(f"{self.path}: the counts of queue {name!r} are damaged") from exc

    def _new_queue(self, txn: Txn, name: str) -> fmt.QueueRow:
        found = self._queue(txn, name)
        if found is not None:
            return found
        fmt.new_name_key(name)  # a name no key can hold is refused: the write is undone
        return fmt.QueueRow(self._bump(txn, b"next_queue", 1))

    def _save(self, txn: Txn, name: str, q: fmt.QueueRow) -> None:
        if q.stale:
            self._leases().recount(txn, self._leased, q, self.path)
        txn.put(name.encode(), q.packed(), db=self._queues)

    def _bump(self, txn: Txn, counter: bytes, by: int) -> int:
        """Advance a counter by ``by``; return its value before."""
        value = txn.get(counter, db=self._counters)
        try:
            first = 1 if value is None else fmt.U64.unpack(value)[0]
        except struct.error as exc:
            raise CorruptError(f"{self.path}: the counter {counter.decode()} is damaged "
                               f"({len(value or b'')} bytes, not 8)") from exc
        if by:
            txn.put(counter, fmt.U64.pack(first + by), db=self._counters)
        return first

    def _add(self, txn: Txn, name: str, q: fmt.QueueRow, recs: Sequence[StoredRecord]) -> int:
        """Append copies of ``recs`` (attempts and reason kept) at the tail under new ids;
        return the first id."""
        return self._add_values(txn, name, q, [fmt.pack(rec) for rec in recs],
                                sum(len(r.data) for r in recs), sum(r.raw_size for r in recs))

    def _add_values(self, txn: Txn, name: str, q: fmt.QueueRow, values: Sequence[bytes],
                    stored: int, raw: int) -> int:
        """Append packed record values at the tail under new ids; return the first id."""
        first = self._bump(txn, b"next_id", len(values))
        key = fmt.KEY.pack
        number = q.number
        keys = map(key, repeat(number), range(first, first + len(values)))
        txn.cursor(self._ready).putmulti(list(zip(keys, values, strict=True)))
        q.ready += len(values)
        q.stored += stored
        q.raw += raw
        self._save(txn, name, q)
        return first

    # ---- the engine protocol ------------------------------------------------------------

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        if not batch_given(records, raw_sizes):
            return []
        queue = as_queue_name(queue)
        records = as_records(records)
        checked_size_types(raw_sizes)
        refuse_nan(self.path, "append", "now", now)
        values = fmt.pack_new_many(records, raw_sizes, now)
        stored, raw = sum(map(len, records)), sum(raw_sizes)

        def body(txn: Txn) -> list[int]:
            first = self._add_values(txn, queue, self._new_queue(txn, queue), values, stored, raw)
            return list(range(first, first + len(values)))

        return self._write("append", body)

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        n = as_int(n, "n")
        head = None if lease is None else fmt.lease_head(lease)
        owner, until = (b"", 0.0) if lease is None else (lease.owner.encode(), lease.until)
        if nothing_visible(self.path, now, lease):
            return []

        def body(txn: Txn) -> list[StoredRecord]:
            q = self._queue(txn, queue)
            if q is None or n <= 0:
                return []
            walk.promote(txn, self._ready, self._delayed, self._index(), q.number, now)
            prefix = fmt.U32.pack(q.number)
            out: list[StoredRecord] = []
            leased: list[tuple[bytes, bytes]] = []
            unpack, plain, ident_of, path = fmt.unpack, fmt.unpack_plain, fmt.KEY.unpack, self.path
            cur = txn.cursor(self._ready)
            more = cur.set_range(prefix)
            while more and len(out) < n:
                key, value = cur.item()
                if not key.startswith(prefix):
                    break
                if head is None:
                    ident = ident_of(key)[1]
                    try:
                        rec = plain(ident, value)
                    except struct.error:
                        rec = None  # unpack() below names the damage
                    out.append(unpack(path, ident, value) if rec is None else rec)
                else:
                    rec = unpack(path, ident_of(key)[1], value, bump=1)
                    leased.append((key, head + fmt.with_attempts(value, rec.attempts)))
                    out.append(rec)
                more = cur.delete()
            if leased:
                txn.cursor(self._leased).putmulti(leased)
                self._leases().count(txn, q.number, owner, len(leased))
                q.soonest = min(q.soonest, until)
            if out:
                q.ready -= len(out)
                if lease is None:
                    q.stored -= sum(map(len, map(_data, out)))
                    q.raw -= sum(map(_raw_size, out))
                else:
                    q.leased += len(out)
                self._save(txn, queue, q)
            return out

        return self._write("take", body)

    def restore(self, queue: str, records: Sequence[StoredRecord]) -> None:
        if not records:
            return
        queue = as_queue_name(queue)
        records = checked_records(records)
        ids = distinct_ids(queue, records)
        for rec in records:
            refuse_nan(self.path, "restore", f"the enqueue time of record {rec.id}",
                        rec.enqueued_at)

        def body(txn: Txn) -> None:
            last = self._bump(txn, b"next_id", 0)  # the id the next put gets
            never = next((i for i in ids if not 0 < i < last), None)
            if never is not None:
                raise never_given(queue, never)  # a put would overwrite it
            q = self._new_queue(txn, queue)
            index = self._index()
            for ident in ids:
                key = fmt.KEY.pack(q.number, ident)
                if any(txn.get(key, db=db) is not None
                       for db in (self._ready, self._leased, index)):
                    raise restore_refused(queue, ident)  # aborts the transaction
            for rec in records:
                txn.put(fmt.KEY.pack(q.number, rec.id), fmt.pack(rec), db=self._ready)
            q.ready += len(records)
            q.stored += sum(len(r.data) for r in records)
            q.raw += sum(r.raw_size for r in records)
            self._save(txn, queue, q)

        self._write("restore", body)

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        n, offset = check_window(as_int(n, "n"), as_int(offset, "offset"))

        def body(txn: Txn) -> list[StoredRecord]:
            q = self._queue(txn, queue)
            if q is None or n <= 0:
                return []
            last = self._pages.resume(txn.id(), ("ready", q.number), offset)
            records = walk.in_order(txn, self._ready, self._delayed, self._ids, q.number,
                                    first=0 if last is None else last + 1)
            window = itertools.islice(records, n) if last is not None else \
                itertools.islice(records, offset, offset + n)
            got = [self._record(ident, value) for ident, _, _, value in window]
            if got:
                self._pages.ended(("ready", q.number), offset, len(got), got[-1].id,
                                  got[-2].id if len(got) > 1 else None)
            return got

        return self._read("peek", body)

    def peek_leased(self, queue: str, n: int, offset: int = 0) -> list[LeasedRecord]:
        n, offset = check_window(as_int(n, "n"), as_int(offset, "offset"))

        def body(txn: Txn) -> list[LeasedRecord]:
            q = self._queue(txn, queue)
            if q is None or not q.leased:
                return []
            last = self._pages.resume(txn.id(), ("leased", q.number), offset)
            entries = walk.prefixed(txn, self._leased, q.number,
                                    b"" if last is None else fmt.KEY.pack(q.number, last + 1))
            window = itertools.islice(entries, n) if last is not None else \
                itertools.islice(entries, offset, offset + n)
            got = [LeasedRecord(rec, owner, until) for owner, until, rec in (
                self._leased_record(fmt.KEY.unpack(key)[1], value) for key, value in window)]
            if got:
                self._pages.ended(("leased", q.number), offset, len(got), got[-1].record.id,
                                  got[-2].record.id if len(got) > 1 else None)
            return got

        return self._read("peek_leased", body)

    def counts(self, queue: str) -> Counts:
        def body(txn: Txn) -> Counts:
            q = self._queue(txn, queue)
            return Counts(0, 0, 0, 0) if q is None else Counts(q.ready, q.leased, q.stored,
                                                               q.raw)

        return self._read("counts", body)

    def owners(self, queue: str) -> dict[str, int]:
        def body(txn: Txn) -> dict[str, int]:
            q = self._queue(txn, queue)
            held: dict[str, int] = {}
            if q is not None and q.leased and self._owners is not None and not q.stale:
                return self._owners.held(txn, q.number)
            if q is not None and q.leased:  # a row an earlier release wrote: see QueueRow
                for key, value in walk.prefixed(txn, self._leased, q.number):
                    holder = self._leased_record(fmt.KEY.unpack(key)[1], value)[0]
                    held[holder] = held.get(holder, 0) + 1
            return held

        return self._read("owners", body)

    def queues(self) -> list[str]:
        def body(txn: Txn) -> list[str]:
            return [key.decode() for key, _ in txn.cursor(self._queues)]

        return self._read("queues", body)

    def get_meta(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None. Keys follow the rule of
        :func:`~spoolq.engines._checks.meta_key_bytes` (TypeError or ValueError)."""
        name = meta_key_bytes(key)
        return self._read("get_meta", lambda txn: txn.get(name, db=self._meta))

    def set_meta(self, key: str, value: bytes) -> None:
        """Store ``value`` (bytes-like) under ``key``, which follows the rule of
        :func:`~spoolq.engines._checks.meta_key_bytes` (TypeError or ValueError)."""
        name, blob = meta_key_bytes(key), as_bytes(value, "a metadata value")
        self._write("set_meta", lambda txn: txn.put(name, blob, db=self._meta))

    def close(self) -> None:
        self._env.close()


class LMDBEngine(SharedEngine):
    """Queue storage in one LMDB file, safe to share between processes (see the module).

    ``sync``/``metasync`` are LMDB's flush settings (the registry picks them
    from ``durability``); ``map_size`` is the initial map in bytes (it doubles
    when full); ``max_readers`` bounds the read transactions open at once
    across every process using the file.
    """

    def __init__(self, path: str | os.PathLike[str], *, sync: bool = True,
                 metasync: bool = False, map_size: int = 64 << 20, max_readers: int = 126,
                 read_only: bool = False) -> None:
        opening.check_options(map_size, max_readers)
        spath = os.fspath(path)
        super().__init__(spath, read_only=read_only, opener=lambda: _LMDBStore(
            spath, read_only=read_only, sync=bool(sync), metasync=bool(metasync),
            map_size=map_size, max_readers=max_readers),
            flushes={"sync": bool(sync), "metasync": bool(metasync)})

    def expire_some(self, queue: str, now: float, **options: Any) -> tuple[int, int]:
        """``expire`` of at most ``limit`` leases, ids above ``after``: see _lmdblease."""
        entry = self._writable("expire")
        with entry.lock:
            if entry.closed:
                raise self._closed()
            return cast(_LMDBStore, entry.store).expire_some(queue, now, **options)
