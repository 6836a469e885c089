"""The memory engine: the reference implementation of the engine protocol.

Records live in this process only and are gone when it ends. It is the test
oracle for the disk engines and, with the codec in front, a compressed
in-memory queue.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections import deque
from collections.abc import Mapping, Sequence
from itertools import chain, islice, repeat
from math import inf, isnan

from ._checks import (
    MAX_OWNER_BYTES,
    as_bytes,
    as_delivery,
    as_int,
    as_max_attempts,
    as_meta_key,
    as_queue_name,
    as_records,
    as_text,
    check_expire,
    checked_ids,
    checked_owner,
    checked_size_types,
)
from ._memoryqueue import Entry as _Entry
from ._memoryqueue import QueueState as _Queue
from ._memoryqueue import data_of as _data
from ._memoryqueue import due_now as _due_now
from ._memoryqueue import hold as _hold
from ._memoryqueue import id_of as _ident
from ._memoryqueue import let_go as _let_go
from ._memoryqueue import new_record as _new_record
from ._memoryqueue import pop_fresh as _pop_fresh
from ._memoryqueue import put_aside as _put_aside
from ._memoryqueue import raw_size_of as _raw_size
from ._memoryqueue import ready_ids as _ready_ids
from ._memoryqueue import record as _record
from .base import (
    MAX_RAW_SIZE,
    Counts,
    Lease,
    LeasedRecord,
    StoredRecord,
    batch_given,
    check_window,
    checked_raw_size,
    checked_records,
    dead_queue_name,
    distinct_ids,
    due_by,
    never_given,
    nothing_visible,
    refuse_nan,
    restore_refused,
)

__all__ = ["MemoryEngine", "RecordState"]

_WHERE = "the memory engine"

RecordState = tuple[int, bytes, int, int, float, str | None, str | None, float]
"""One record as :meth:`MemoryEngine.export` gives it: id, data, raw_size,
attempts, enqueued_at, reason, lease owner (None when ready) and visible_at."""


def _check_take(n: object, lease: Lease | None) -> None:
    """TypeError for a take's count that is not an int, or a lease owner not a str;
    ValueError for an owner longer than the files hold (see :func:`checked_owner`)."""
    as_int(n, "n")
    if lease is not None:
        checked_owner(lease.owner)


class MemoryEngine:
    """Keeps every record in memory, in this process only."""

    name = "memory"
    inline = True
    """Calls never block, so the async queue runs them on the event loop, not a thread."""

    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}
        self._meta: dict[str, bytes] = {}
        self._next_id = 1

    def _q(self, queue: str) -> _Queue:
        q = self._queues.get(queue)
        if q is None:
            q = self._queues[queue] = _Queue()
        return q

    def _add(self, q: _Queue, data: bytes, raw_size: int, enqueued_at: float,
             attempts: int = 0, reason: str | None = None) -> None:
        """Add a ready record under a new id (greater than any id the engine gave before)."""
        ident = self._next_id
        self._next_id = ident + 1
        q.fresh.append(_new_record((ident, data, raw_size, attempts, enqueued_at, reason)))
        q.stored_bytes += len(data)
        q.raw_bytes += raw_size

    def _put_back(self, q: _Queue, ident: int, entry: _Entry) -> None:
        """Add a ready entry under an id it had before, so at its old place in the order."""
        q.entries[ident] = entry
        heapq.heappush(q.back, ident)
        q.stored_bytes += len(entry.data)
        q.raw_bytes += entry.raw_size

    def _drop(self, q: _Queue, ident: int) -> _Entry:
        entry = q.entries.pop(ident)
        q.stored_bytes -= len(entry.data)
        q.raw_bytes -= entry.raw_size
        return entry

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        if isnan(now):
            refuse_nan(_WHERE, "append", "now", now)
        if type(queue) is not str:
            as_queue_name(queue)
        first = self._next_id
        k = len(records)
        if k == 1 and len(raw_sizes) == 1:  # the common put, without the batch's set-up
            data, raw_size = records[0], raw_sizes[0]
            if type(data) is not bytes:
                data = as_bytes(data, "a record")
            if type(raw_size) is not int or not 0 <= raw_size <= MAX_RAW_SIZE:
                checked_raw_size(raw_size)
            q = self._queues.get(queue) or self._q(as_queue_name(queue))
            self._next_id = first + 1
            q.fresh.append(_new_record((first, data, raw_size, 0, now, None)))
            q.stored_bytes += len(data)
            q.raw_bytes += raw_size
            return [first]
        if not batch_given(records, raw_sizes):
            return []
        records = as_records(records)
        checked_size_types(raw_sizes)
        q = self._queues.get(queue) or self._q(as_queue_name(queue))
        ids = range(first, first + k)
        self._next_id = ids.stop
        q.fresh.extend(map(_new_record, zip(ids, records, raw_sizes, repeat(0, k),
                                            repeat(now, k), repeat(None, k), strict=True)))
        q.stored_bytes += sum(map(len, records))
        q.raw_bytes += sum(raw_sizes)
        return list(ids)

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        if type(n) is not int or (lease is not None and not (
                type(owner := lease.owner) is str and owner.isascii()
                and len(owner) <= MAX_OWNER_BYTES)):
            _check_take(n, lease)
        q = self._queues.get(queue)
        # Two C calls on the way of every take; the helper only for a NaN.
        if ((isnan(now) or (lease is not None and isnan(lease.until)))
                and nothing_visible(_WHERE, now, lease)) or q is None:
            return []
        fresh, back, entries = q.fresh, q.back, q.entries
        if q.later and q.later[0][0] <= due_by(now):
            _due_now(q, due_by(now))
        if lease is None and not back:  # get and get_many: the oldest fresh records
            if n == 1:
                if not fresh:
                    return []
                rec = fresh.popleft()
                q.stored_bytes -= len(rec[1])
                q.raw_bytes -= rec[2]
                return [rec]
            return _pop_fresh(q, n)
        out: list[StoredRecord] = []
        heappop, now = heapq.heappop, due_by(now)  # what waits for no time is seen before 0
        stored = raw = 0
        while len(out) < n:
            if back and (not fresh or back[0] < fresh[0][0]):
                ident = heappop(back)
                entry = entries[ident]
                if entry.visible_at > now:  # due at a later take (the clock was set back)
                    _put_aside(q, ident, entry.visible_at)
                    continue
                if lease is None:
                    del entries[ident]
                    stored += len(entry.data)
                    raw += entry.raw_size
                else:
                    entry.attempts += 1
                    entry.owner, entry.visible_at = lease.owner, lease.until
                out.append(_record(ident, entry))
            elif fresh:
                rec = fresh.popleft()
                if lease is None:
                    stored += len(rec[1])
                    raw += rec[2]
                    out.append(rec)
                else:
                    ident, data, raw_size, attempts, enqueued_at, reason = rec
                    entry = entries[ident] = _Entry(data, raw_size, attempts + 1, enqueued_at,
                                                    lease.until, lease.owner, reason)
                    out.append(_record(ident, entry))
            else:
                break
        if lease is None:
            q.stored_bytes -= stored
            q.raw_bytes -= raw
        elif out:
            q.leased += len(out)
            _hold(q, lease.owner, len(out), lease.until)
        return out

    def restore(self, queue: str, records: Sequence[StoredRecord]) -> None:
        if not records:
            return
        queue = as_queue_name(queue)
        records = checked_records(records)
        for rec in records:
            refuse_nan(_WHERE, "restore", f"the enqueue time of record {rec.id}",
                       rec.enqueued_at)
        ids = distinct_ids(queue, records)
        never = next((i for i in ids if not 0 < i < self._next_id), None)
        if never is not None:
            raise never_given(queue, never)
        q = self._queues.get(queue)
        if q is not None:
            for ident in ids:
                if self._holds(q, ident):
                    raise restore_refused(queue, ident)
        q = q or self._q(queue)
        for rec in records:
            self._put_back(q, rec.id, _Entry(rec.data, rec.raw_size, rec.attempts,
                                             rec.enqueued_at, reason=rec.reason))

    @staticmethod
    def _holds(q: _Queue, ident: int) -> bool:
        """Whether the queue holds a record of this id, ready or leased."""
        if ident in q.entries:
            return True
        fresh = q.fresh
        # Records restored after a take have ids below every fresh one: no search then.
        if not fresh or not fresh[0][0] <= ident <= fresh[-1][0]:
            return False
        at = bisect_left(fresh, ident, key=_ident)
        return fresh[at][0] == ident

    def _held(self, q: _Queue, ident: int, attempts: int, owner: str) -> _Entry | None:
        entry = q.entries.get(ident)
        if entry is None or entry.owner is None or entry.attempts != attempts \
                or entry.owner != owner:
            return None
        return entry

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        q = self._queues.get(queue)
        done: list[int] = []
        if q is None or not isinstance(owner, str):
            return done  # no take stores an owner that is not text: it holds no lease
        for delivery in deliveries:
            ident, attempts = delivery
            if type(ident) is not int or type(attempts) is not int:
                if (pair := as_delivery(ident, attempts)) is None:
                    continue  # 1.0 would find the record of 1: it holds no lease
                ident, attempts = pair
            if self._held(q, ident, attempts, owner) is not None:
                self._drop(q, ident)
                done.append(ident)
        if done:
            q.leased -= len(done)
            _let_go(q, owner, len(done))
        return done

    def _unlease(self, queue: str, q: _Queue, ident: int, entry: _Entry, not_before: float,
                 max_attempts: int | None, count_attempt: bool, reason: str) -> None:
        q.leased -= 1
        if entry.owner is not None:
            _let_go(q, entry.owner)
        entry.owner = None
        if not count_attempt:
            entry.attempts -= 1
        if count_attempt and max_attempts is not None and entry.attempts >= max_attempts:
            self._drop(q, ident)
            self._add(self._q(dead_queue_name(queue)), entry.data, entry.raw_size,
                      entry.enqueued_at, entry.attempts, reason or "nacked")
            return
        entry.visible_at = not_before
        _put_aside(q, ident, not_before)

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str, *,
                not_before: float, max_attempts: int | None, count_attempt: bool = True,
                reason: str = "") -> list[int]:
        if type(reason) is not str:
            as_text(reason, "a reason")
        as_max_attempts(max_attempts)
        q = self._queues.get(queue)
        done: list[int] = []
        if q is None:
            return done
        if isnan(not_before):
            refuse_nan(_WHERE, "release", "not_before", not_before)
        if not isinstance(owner, str):
            return done  # the owner of no lease
        held: dict[int, _Entry] = {}  # a delivery named twice is released once
        for delivery in deliveries:
            ident, attempts = delivery
            if type(ident) is not int or type(attempts) is not int:
                if (pair := as_delivery(ident, attempts)) is None:
                    continue
                ident, attempts = pair
            entry = self._held(q, ident, attempts, owner)
            if entry is not None:
                held[ident] = entry
        # In id order: the dead letters get new ids in the order the records had, as a move
        # gives them, whatever order the deliveries named them in.
        for ident in sorted(held):
            self._unlease(queue, q, ident, held[ident], not_before, max_attempts, count_attempt,
                          reason)
        done.extend(held)
        return done

    def expire(self, queue: str, now: float, *, owners: Sequence[str] = (),
               max_attempts: int | None = None) -> int:
        check_expire(now, owners, max_attempts)
        q = self._queues.get(queue)
        if q is None:
            return 0
        gone = q.holders.keys() & set(owners)
        if not gone and not q.soonest <= now:
            return 0  # no lease ended (or now is NaN): nothing to read
        due: list[tuple[int, _Entry]] = []
        soonest = inf
        for ident, entry in q.entries.items():
            if entry.owner is None:
                continue
            if entry.visible_at <= now or entry.owner in gone:
                due.append((ident, entry))
            elif entry.visible_at < soonest:
                soonest = entry.visible_at
        for ident, entry in sorted(due, key=lambda pair: pair[0]):
            why = "lease expired" if entry.visible_at <= now else "owner died"
            self._unlease(queue, q, ident, entry, 0.0, max_attempts, True, why)
        q.soonest = soonest  # every lease left was read: none ends before it
        return len(due)

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        n, offset = check_window(as_int(n, "n"), as_int(offset, "offset"))
        q = self._queues.get(queue)
        if q is None:
            return []
        end = offset + n
        # Ids only, then records for the window alone: ids are unique, so compare by id.
        held = heapq.nsmallest(end, _ready_ids(q))
        merged = heapq.merge(((rec[0], rec) for rec in islice(q.fresh, end)),
                             ((i, None) for i in held), key=_ident)
        return [rec or _record(i, q.entries[i]) for i, rec in islice(merged, offset, end)]

    def peek_leased(self, queue: str, n: int, offset: int = 0) -> list[LeasedRecord]:
        n, offset = check_window(as_int(n, "n"), as_int(offset, "offset"))
        q = self._queues.get(queue)
        if q is None or not q.leased or n == 0:
            return []
        ids = heapq.nsmallest(offset + n, (i for i, e in q.entries.items()
                                           if e.owner is not None))[offset:]
        return [LeasedRecord(StoredRecord(i, e.data, e.raw_size, e.attempts, e.enqueued_at,
                                          e.reason), e.owner, e.visible_at)
                for i in ids for e in (q.entries[i],) if e.owner is not None]

    def counts(self, queue: str) -> Counts:
        q = self._queues.get(queue)
        if q is None:
            return Counts(0, 0, 0, 0)
        ready = len(q.fresh) + len(q.back) + len(q.later)
        return Counts(ready, q.leased, q.stored_bytes, q.raw_bytes)

    def owners(self, queue: str) -> dict[str, int]:
        q = self._queues.get(queue)
        return {} if q is None else dict(q.holders)

    def move(self, src: str, dst: str, ids: Sequence[int] | None = None) -> int:
        dst, ids = as_queue_name(dst), checked_ids(ids)
        s = self._queues.get(src)
        if s is None:
            return 0
        wanted = None if ids is None else set(ids)
        kept: deque[StoredRecord] = deque()
        from_fresh: list[StoredRecord] = []
        for rec in s.fresh:
            (from_fresh if wanted is None or rec[0] in wanted else kept).append(rec)
        from_back = [_record(i, self._drop(s, i)) for i in _ready_ids(s)
                     if wanted is None or i in wanted]
        if not from_fresh and not from_back:
            return 0
        s.fresh = kept
        s.stored_bytes -= sum(map(len, map(_data, from_fresh)))
        s.raw_bytes -= sum(map(_raw_size, from_fresh))
        if from_back:
            s.back = [i for i in s.back if i in s.entries]
            s.later = [e for e in s.later if e[1] in s.entries]
            heapq.heapify(s.back)
            heapq.heapify(s.later)
        d = self._q(dst)
        chosen = sorted(from_fresh + from_back)
        for rec in chosen:
            self._add(d, rec.data, rec.raw_size, rec.enqueued_at)
        return len(chosen)

    def purge(self, queue: str) -> int:
        q = self._queues.get(queue)
        if q is None:
            return 0
        self._queues[queue] = _Queue()  # emptied, but still a queue that held records
        return len(q.entries) + len(q.fresh)

    def queues(self) -> list[str]:
        return sorted(self._queues)

    def get_meta(self, key: str) -> bytes | None:
        return self._meta.get(key)

    def set_meta(self, key: str, value: bytes) -> None:
        self._meta[as_meta_key(key)] = as_bytes(value, "a metadata value")

    def close(self) -> None:
        """Nothing to release: the records simply go when the engine is dropped."""

    def export(self) -> tuple[int, dict[str, bytes], dict[str, list[RecordState]]]:
        """Everything the engine holds: the next id, the metadata and each queue's
        records in id order (every queue :meth:`queues` names, empty ones too).
        :meth:`load` builds an equal engine from it."""
        queues = {
            name: sorted(chain(
                ((*rec, None, 0.0) for rec in q.fresh),
                ((ident, e.data, e.raw_size, e.attempts, e.enqueued_at, e.reason, e.owner,
                  e.visible_at) for ident, e in q.entries.items())))
            for name, q in self._queues.items()
        }
        return self._next_id, dict(self._meta), queues

    @classmethod
    def load(cls, next_id: int, meta: Mapping[str, bytes],
             queues: Mapping[str, Sequence[RecordState]]) -> MemoryEngine:
        """An engine holding what :meth:`export` gave (the caller checks the values)."""
        engine = cls()
        engine._next_id = next_id
        engine._meta = dict(meta)
        for name, records in queues.items():
            q = engine._q(name)
            fresh: list[StoredRecord] = []
            for ident, data, raw_size, attempts, enqueued_at, reason, owner, visible in records:
                q.stored_bytes += len(data)
                q.raw_bytes += raw_size
                if owner is None and visible <= 0:
                    fresh.append(_new_record((ident, data, raw_size, attempts, enqueued_at,
                                              reason)))
                    continue
                q.entries[ident] = _Entry(data, raw_size, attempts, enqueued_at, visible, owner,
                                          reason)
                if owner is not None:
                    q.leased += 1
                    _hold(q, owner, 1, visible)
                else:
                    q.later.append((visible, ident))
            q.fresh = deque(sorted(fresh))
            heapq.heapify(q.later)
        return engine
