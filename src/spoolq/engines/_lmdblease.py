"""How the LMDB engine settles leases: ack removes leased records, release puts them
back (ready, or delayed until ``not_before``), expire does so for leases that ran out or
whose owner died, and a record out of attempts goes to the tail of the queue's
dead-letter queue instead.

:class:`LeaseSettling` is a mixin of the LMDB engine's store; every call is one write
transaction of the store.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

from ..errors import CorruptError
from . import _lmdbformat as fmt
from . import _lmdbwalk as walk
from ._checks import as_max_attempts, as_text, check_expire, int_deliveries
from ._lmdbowners import LeaseOwners
from .base import StoredRecord, dead_queue_name, refuse_nan

if TYPE_CHECKING:
    import lmdb

    Txn = lmdb.Transaction[bytes]
    Db = lmdb._Database

__all__ = ["LeaseSettling"]

T = TypeVar("T")


class LeaseSettling:
    """Ack, release, expire and the dead letters, for the LMDB store."""

    if TYPE_CHECKING:
        path: str
        _ready: Db
        _delayed: Db
        _leased: Db

        def _index(self) -> Db: ...

        def _leases(self) -> LeaseOwners: ...

        def _write(self, what: str, body: Callable[[Txn], T]) -> T: ...

        def _leased_record(self, ident: int, value: bytes) -> tuple[str, float, StoredRecord]: ...

        def _queue(self, txn: Txn, name: str) -> fmt.QueueRow | None: ...

        def _new_queue(self, txn: Txn, name: str) -> fmt.QueueRow: ...

        def _save(self, txn: Txn, name: str, q: fmt.QueueRow) -> None: ...

        def _add(self, txn: Txn, name: str, q: fmt.QueueRow,
                 recs: Sequence[StoredRecord]) -> int: ...

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        if not isinstance(owner, str):
            return []  # an owner of no lease
        try:
            holder = owner.encode()
        except UnicodeEncodeError:
            return []  # not UTF-8 (a lone surrogate): no take stores such an owner

        def body(txn: Txn) -> list[int]:
            q = self._queue(txn, queue)
            if q is None or not deliveries:
                return []
            done: list[int] = []
            cur = txn.cursor(self._leased)
            key, number, held_by, reader = fmt.KEY.pack, q.number, fmt.held_by, \
                fmt.lease_reader(holder)
            for ident, attempts in sorted(int_deliveries(deliveries)):
                try:
                    wanted = key(number, ident)
                except struct.error:
                    continue  # an id no record can have (negative, or past 64 bits)
                # After a delete the cursor stands on the next record: usually the next one
                # of a batch, found without searching the tree again.
                if cur.key() != wanted and not cur.set_key(wanted):
                    continue
                held = held_by(cur.value(), holder, reader)
                if held is not None and held[0] == attempts:
                    cur.delete()
                    done.append(ident)
                    q.raw -= held[1]
                    q.stored -= held[2]
            if done:
                self._leases().count(txn, number, holder, -len(done))
                q.leased -= len(done)
                self._save(txn, queue, q)
            return done

        return self._write("ack", body)

    def _unlease(self, txn: Txn, queue: str, q: fmt.QueueRow, rec: StoredRecord, not_before: float,
                 max_attempts: int | None, count_attempt: bool, reason: str) -> None:
        """Turn a leased record (already deleted from ``leased``) ready again, or dead."""
        q.leased -= 1
        attempts = rec.attempts if count_attempt else rec.attempts - 1
        if count_attempt and max_attempts is not None and attempts >= max_attempts:
            q.stored -= len(rec.data)
            q.raw -= rec.raw_size
            dead = dead_queue_name(queue)
            self._add(txn, dead, self._new_queue(txn, dead), [rec._replace(reason=reason)])
            return
        q.ready += 1
        value = fmt.pack(rec, attempts)
        if not_before > 0:
            walk.delay(txn, self._delayed, self._index(), q.number, rec.id, not_before, value)
        else:
            txn.put(fmt.KEY.pack(q.number, rec.id), value, db=self._ready)

    def _held(self, txn: Txn, q: fmt.QueueRow, deliveries: Sequence[tuple[int, int]],
              owner: str) -> Iterator[StoredRecord]:
        """Delete and yield the leased records among ``deliveries`` that ``owner`` holds."""
        for ident, attempts in int_deliveries(deliveries):
            try:
                key = fmt.KEY.pack(q.number, ident)
            except struct.error:
                continue  # an id no record can have (negative, or past 64 bits)
            value = txn.get(key, db=self._leased)
            if value is None:
                continue
            holder, _, rec = self._leased_record(ident, value)
            if holder == owner and rec.attempts == attempts:
                txn.delete(key, db=self._leased)
                yield rec

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str, *,
                not_before: float, max_attempts: int | None, count_attempt: bool = True,
                reason: str = "") -> list[int]:
        reason = as_text(reason, "a reason")
        as_max_attempts(max_attempts)
        refuse_nan(self.path, "release", "not_before", not_before)

        def body(txn: Txn) -> list[int]:
            q = self._queue(txn, queue)
            if q is None or not deliveries:
                return []
            # In id order: the dead letters get new ids in the order the records had, as a
            # move gives them, whatever order the deliveries named them in.
            done = sorted(self._held(txn, q, deliveries, owner), key=lambda rec: rec.id)
            if done:
                self._leases().count(txn, q.number, owner.encode(), -len(done))
            for rec in done:
                self._unlease(txn, queue, q, rec, not_before, max_attempts, count_attempt,
                              reason or "nacked")
            if done:
                self._save(txn, queue, q)
            return sorted(r.id for r in done)

        return self._write("release", body)

    def expire(self, queue: str, now: float, *, owners: Sequence[str] = (),
               max_attempts: int | None = None) -> int:
        return self._expire(queue, now, owners, max_attempts, None, 0)[0]

    def expire_some(self, queue: str, now: float, *, owners: Sequence[str] = (),
                    max_attempts: int | None = None, limit: int,
                    after: int = 0) -> tuple[int, int]:
        """:meth:`expire` of at most ``limit`` leases, of records with ids above ``after``:
        one transaction, whose memory grows with ``limit``, not with the leases held.
        Return how many it ended and the id to pass as ``after`` to go on (0 when no lease
        is left to read)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, not {limit!r}")
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ValueError(f"after must be an int of at least 0, not {after!r}")
        return self._expire(queue, now, owners, max_attempts, limit, after)

    def _expire(self, queue: str, now: float, owners: Sequence[str],
                max_attempts: int | None, limit: int | None,
                after: int) -> tuple[int, int]:
        check_expire(now, owners, max_attempts)
        wanted = set(owners)

        def body(txn: Txn) -> tuple[int, int]:
            q = self._queue(txn, queue)
            if q is None or not q.leased:
                return 0, 0
            held = self._leases()
            # (The counts of a stale row may miss owners: every lease is read then.)
            gone = wanted if q.stale else wanted & held.held(txn, q.number).keys()
            if not gone and not q.soonest <= now:
                return 0, 0  # no lease has ended (or now is NaN): nothing to read
            count, soonest = 0, math.inf
            start = fmt.KEY.pack(q.number, after + 1) if after else b""
            more = 0
            while True:
                # A chunk of due leases at a time: memory holds their keys, not the records.
                size = walk.CHUNK if limit is None else min(walk.CHUNK, limit - count)
                due, earliest = self._ended(txn, q.number, now, gone, start, size)
                soonest = min(soonest, earliest)
                holders: list[str] = []
                for key in due:
                    popped = txn.pop(key, db=self._leased)
                    if popped is None:
                        raise CorruptError(f"{self.path}: leased record {key.hex()} vanished")
                    holder, until, rec = self._leased_record(fmt.KEY.unpack(key)[1], popped)
                    holders.append(holder)
                    self._unlease(txn, queue, q, rec, 0.0, max_attempts, True,
                                  "lease expired" if until <= now else "owner died")
                held.uncount(txn, q.number, holders)
                count += len(due)
                if len(due) < size:
                    break
                start = due[-1]
                if limit is not None and count >= limit:
                    more = fmt.KEY.unpack(due[-1])[1]
                    break
            if not more and not after:
                q.soonest = soonest  # every lease left was read: none ends before it
            # (Else the leases not read keep the earliest end they had: a bound still.)
            self._save(txn, queue, q)
            return count, more

        return self._write("expire", body)

    def _ended(self, txn: Txn, number: int, now: float, gone: set[str],
               start: bytes, size: int) -> tuple[list[bytes], float]:
        """Keys of up to a chunk of queue ``number``'s leased records, from ``start`` on,
        whose lease ended by ``now`` or whose owner is in ``gone``; and the earliest end of
        the others read."""
        due: list[bytes] = []
        earliest = math.inf
        for key, value in walk.prefixed(txn, self._leased, number, start):
            holder, until, _ = self._leased_record(fmt.KEY.unpack(key)[1], value)
            if until <= now or holder in gone:
                due.append(key)
                if len(due) == size:
                    break
            elif until < earliest:
                earliest = until
        return due, earliest
