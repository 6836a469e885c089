"""The dbm engine: a queue in the standard library's ``dbm``, whatever backend it has.

Layout. ``path`` is a directory. ``CURRENT`` names the live generation, one
dbm database (``gen-000001.dat``/``.dir`` with ``dbm.dumb``); see
:mod:`spoolq.engines._dbmfiles`. Its keys:

- ``m<queue>.<position>``: the queue's main line, appended at ``tail`` and
  taken at ``head``, so a take reads the next key with no scan;
- ``x<queue>.<n>``: a record put back out of line by ``restore``;
- ``s<commit>``: the state after each committed call (a CRC-checked JSON
  document): the id counter, metadata, and per queue ``head``/``tail``, the
  counts, and the records held aside from the main line (leased, or ready
  again after a release) with their owner, attempts and ``visible_at``.

Every call is a transaction whose commit point is writing one new state key.
Records are written first, under keys no committed state names, and no key
is ever overwritten or deleted: a call cut short by a killed process leaves
only keys that the last committed state does not know, and the next writable
open copies the live records into a fresh generation without them. Freed
records are reclaimed the same way, by rewriting a new generation once the
database holds more dead keys than live ones, or more bytes of freed records
and replaced states than of live ones and over 8 MiB (amortized O(1) per
record; the files stay within a few times the live data, whatever the size
of the records).

Why not ``sync()`` after every call: ``dbm.dumb`` appends a new key's index
line to its ``.dir`` file at once, so new keys already survive a killed
process; only overwrites and deletes wait for ``sync``, which rewrites the
whole index (O(keys) per call, and a window in which a kill leaves it
half-written). This engine does neither, and on open it repairs an index
that a kill cut short during ``close``.

Costs. ``append``/``take``/``ack`` are O(1) dbm operations per record plus
writing the state, whose size grows with the number of queues and of records
held aside (leased, or nacked and not yet taken again) — keep in-flight
counts moderate. ``dbm.dumb`` holds its whole index (keys, not records) in
memory, pads every value to 512 bytes and reads the index at open.

Durability. ``fsync=True`` (durability ``"fsync"``) fsyncs the database files
and the directory before a call returns. Otherwise a killed process loses
nothing; after a power cut the latest calls may be gone: a damaged state or
record is reported with :class:`~spoolq.CorruptError`, and ``recover=True``
opens the queue at the last intact state. Crash safety is tested with ``dbm.dumb``;
with ``dbm.gnu`` or ``dbm.ndbm`` it is what that library gives per store.

One process at a time: opening takes ``<path>.lock`` (of the directory a
symbolic link points to); a second process gets :class:`~spoolq.LockTimeout` at
once. Handles in one process share the open database. ``read_only=True``
takes no lock and never writes; it sees the queue as it was when opened until
the writer compacts the files, and its next ``peek`` then loads the queue as it
is at that moment (the files it had loaded are gone).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

from ..errors import ConfigurationError, CorruptError, EngineError
from . import _dbmfiles as files
from ._checks import (
    as_int,
    as_max_attempts,
    as_meta_key,
    check_expire,
    checked_ids,
    checked_owner,
    int_deliveries,
)
from ._dbmgenerations import Generations
from ._dbmstate import Aside as _Aside
from ._dbmstate import QueueState as _Queue
from ._dbmstate import State as _State
from ._dbmstate import decode_record, leased_window, ready_window
from ._dbmstate import main_key as _main_key
from ._dbmstate import pack as _pack
from ._shared import SharedEngine
from .base import (
    Counts,
    Lease,
    LeasedRecord,
    StoredRecord,
    as_bytes,
    as_queue_name,
    as_text,
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

__all__ = ["DBMEngine"]

log = logging.getLogger("spoolq")

T = TypeVar("T")


class _DBMStore(Generations):
    """One dbm queue directory; see the module docstring."""

    # ---- records ------------------------------------------------------------------------

    def _read(self, key: str | bytes, aside: _Aside | None = None) -> StoredRecord:
        bkey = key.encode() if isinstance(key, str) else key
        try:
            rec = decode_record(self._get(self._require_db(), bkey))
        except (struct.error, ValueError) as exc:
            raise CorruptError(f"{self.path}: record {bkey.decode()} is damaged: {exc}") from exc
        return rec if aside is None else rec._replace(attempts=aside.attempts)

    def _queue(self, st: _State, name: str) -> _Queue:
        q = st.queues.get(name)
        if q is None:
            q = st.queues[name] = _Queue(st.next_number)
            st.next_number += 1
        return q

    def _append(self, st: _State, name: str, recs: Sequence[StoredRecord]) -> int:
        """Append copies of ``recs`` (attempts and reason kept) under new ids; the first id."""
        q = self._queue(st, name)
        first = st.next_id
        st.next_id += len(recs)
        for offset, rec in enumerate(recs):
            self._put(_main_key(q, q.tail), _pack(first + offset, rec))
            q.tail += 1
            q.ready += 1
            q.stored += len(rec.data)
            q.raw += rec.raw_size
        self._changed = True
        return first

    def _unlease(self, st: _State, queue: str, q: _Queue, ident: int, a: _Aside,
                 not_before: float, max_attempts: int | None, count_attempt: bool,
                 reason: str) -> None:
        q.leased -= 1
        a.owner = None
        if not count_attempt:
            a.attempts -= 1
        if count_attempt and max_attempts is not None and a.attempts >= max_attempts:
            rec = self._read(a.key, a)
            del q.aside[ident]
            q.stored -= a.size
            q.raw -= a.raw
            self._freed(a.size)
            self._append(st, dead_queue_name(queue), [rec._replace(reason=reason)])
            return
        q.ready += 1
        a.visible_at = not_before
        self._changed = True

    # ---- the engine protocol ------------------------------------------------------------

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        if not batch_given(records, raw_sizes):
            return []
        # Checked before anything is written: the state keeps names as JSON text, where
        # another type would come back as another name (7 as "7", None as "null").
        queue = as_queue_name(queue)
        refuse_nan(self.path, "append", "now", now)
        batch = [StoredRecord(0, as_bytes(data, "a record"), checked_raw_size(raw), 0, now)
                 for data, raw in zip(records, raw_sizes, strict=True)]
        with self._transaction("append") as st:
            first = self._append(st, queue, batch)
        return list(range(first, first + len(records)))

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        n = as_int(n, "n")
        if lease is not None:
            lease = Lease(checked_owner(lease.owner), lease.until)
        if nothing_visible(self.path, now, lease):
            return []
        with self._transaction("take") as st:
            q = st.queues.get(queue)
            if q is None or n <= 0:
                return []
            out: list[StoredRecord] = []
            # Records held aside always precede the main line: they were taken from it.
            due_at = due_by(now)
            due = sorted(i for i, a in q.aside.items()
                         if a.owner is None and a.visible_at <= due_at)
            for ident in due[:n]:
                a = q.aside[ident]
                rec = self._read(a.key, a)
                if lease is None:
                    del q.aside[ident]
                else:
                    a.attempts += 1
                    a.owner, a.visible_at = lease.owner, lease.until
                    rec = rec._replace(attempts=a.attempts)
                out.append(rec)
            while len(out) < n and q.head < q.tail:
                position = q.head
                q.head += 1
                self._changed = True
                if position in q.holes:
                    q.holes.discard(position)
                    continue
                key = _main_key(q, position)
                rec = self._read(key)
                if lease is not None:
                    rec = rec._replace(attempts=rec.attempts + 1)
                    q.aside[rec.id] = _Aside(key.decode(), lease.owner, lease.until,
                                             rec.attempts, len(rec.data), rec.raw_size)
                out.append(rec)
            if out:
                self._changed = True
                q.ready -= len(out)
                if lease is None:
                    q.stored -= sum(len(r.data) for r in out)
                    q.raw -= sum(r.raw_size for r in out)
                    self._freed(sum(len(r.data) for r in out), len(out))
                else:
                    q.leased += len(out)
            return out

    def restore(self, queue: str, records: Sequence[StoredRecord]) -> None:
        if not records:
            return
        queue = as_queue_name(queue)
        records = checked_records(records)  # before the transaction: a value _pack cannot hold
        ids = distinct_ids(queue, records)
        for rec in records:
            refuse_nan(self.path, "restore", f"the enqueue time of record {rec.id}",
                        rec.enqueued_at)
        with self._transaction("restore") as st:
            never = next((i for i in ids if not 0 < i < st.next_id), None)
            if never is not None:
                raise never_given(queue, never)  # a later put would give its id out again
            q = self._queue(st, queue)
            for ident in ids:
                if ident in q.aside or self._find(q, ident) is not None:
                    raise restore_refused(queue, ident)  # the state goes back: no change
            for rec in records:
                key = f"x{q.number}.{q.extra}"
                q.extra += 1
                self._put(key.encode(), _pack(rec.id, rec))
                q.aside[rec.id] = _Aside(key, None, 0.0, rec.attempts, len(rec.data),
                                         rec.raw_size)
                q.ready += 1
                q.stored += len(rec.data)
                q.raw += rec.raw_size
            self._changed = True

    def _held(self, q: _Queue, deliveries: Sequence[tuple[int, int]],
              owner: str) -> list[tuple[int, _Aside]]:
        held = []
        for ident, attempts in int_deliveries(deliveries):  # 1.0 would find the record of 1
            a = q.aside.get(ident)
            # A record held aside but ready (owner None) holds no lease to settle.
            if (a is not None and a.owner is not None and a.owner == owner
                    and a.attempts == attempts):
                held.append((ident, a))
        return held

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        with self._transaction("ack") as st:
            q = st.queues.get(queue)
            if q is None:
                return []
            done = []
            for ident, a in self._held(q, deliveries, owner):
                if q.aside.pop(ident, None) is not None:
                    q.leased -= 1
                    q.stored -= a.size
                    q.raw -= a.raw
                    self._freed(a.size)
                    done.append(ident)
            self._changed = bool(done)
            return sorted(done)

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str, *,
                not_before: float, max_attempts: int | None, count_attempt: bool = True,
                reason: str = "") -> list[int]:
        reason = as_text(reason, "a reason")
        as_max_attempts(max_attempts)
        refuse_nan(self.path, "release", "not_before", not_before)
        with self._transaction("release") as st:
            q = st.queues.get(queue)
            if q is None:
                return []
            done = []
            # In id order: the dead letters get new ids in the order the records had, as a
            # move gives them, whatever order the deliveries named them in.
            for ident, a in sorted(self._held(q, deliveries, owner), key=lambda pair: pair[0]):
                if a.owner is not None:  # a delivery named twice is released once
                    self._unlease(st, queue, q, ident, a, not_before, max_attempts,
                                  count_attempt, reason or "nacked")
                    done.append(ident)
            return sorted(done)

    def expire(self, queue: str, now: float, *, owners: Sequence[str] = (),
               max_attempts: int | None = None) -> int:
        check_expire(now, owners, max_attempts)
        gone = set(owners)
        with self._transaction("expire") as st:
            q = st.queues.get(queue)
            if q is None:
                return 0
            due = sorted(((i, a) for i, a in q.aside.items()
                          if a.owner is not None and (a.visible_at <= now or a.owner in gone)),
                         key=lambda pair: pair[0])
            for ident, a in due:
                why = "lease expired" if a.visible_at <= now else "owner died"
                self._unlease(st, queue, q, ident, a, 0.0, max_attempts, True, why)
            return len(due)

    def _reading(self, what: str, read: Callable[[], list[T]]) -> list[T]:
        """Run ``read`` over the loaded state, translating OSError into EngineError.

        A read-only handle loaded a generation its writer removes once it compacts:
        when it is gone, the handle loads the one ``CURRENT`` names and reads again.
        """
        try:
            return read()
        except FileNotFoundError as exc:
            if not self.read_only or files.current(self.path) in (None, self._gen):
                raise EngineError(f"{self.path}: {what} failed: {exc}") from exc
        except OSError as exc:
            raise EngineError(f"{self.path}: {what} failed: {exc}") from exc
        log.info("spoolq: %s: rewritten by its writer since this read-only handle opened it; "
                 "reloading", self.path)
        self._recover(what)
        try:
            return read()
        except OSError as exc:
            raise EngineError(f"{self.path}: {what} failed: {exc}") from exc

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        n, offset = check_window(as_int(n, "n"), as_int(offset, "offset"))

        def read() -> list[StoredRecord]:
            q = self._state.queues.get(queue)
            if q is None or n <= 0:
                return []
            return [self._read(key, a) for key, a in ready_window(q, n, offset)]

        return self._reading("peek", read)

    def peek_leased(self, queue: str, n: int, offset: int = 0) -> list[LeasedRecord]:
        n, offset = check_window(as_int(n, "n"), as_int(offset, "offset"))

        def read() -> list[LeasedRecord]:
            q = self._state.queues.get(queue)
            if q is None or not q.leased:
                return []
            return [LeasedRecord(self._read(a.key, a), owner, a.visible_at)
                    for owner, a in leased_window(q, n, offset)]

        return self._reading("peek_leased", read)

    def counts(self, queue: str) -> Counts:
        q = self._state.queues.get(queue)
        return Counts(0, 0, 0, 0) if q is None else Counts(q.ready, q.leased, q.stored, q.raw)

    def owners(self, queue: str) -> dict[str, int]:
        held: dict[str, int] = {}
        q = self._state.queues.get(queue)
        for a in () if q is None else q.aside.values():
            if a.owner is not None:
                held[a.owner] = held.get(a.owner, 0) + 1
        return held

    def _find(self, q: _Queue, ident: int) -> int | None:
        """The main-line position of record ``ident``: ids grow along the line."""
        low, high = q.head, q.tail
        while low < high:
            middle = (low + high) // 2
            if self._read(_main_key(q, middle)).id < ident:
                low = middle + 1
            else:
                high = middle
        if low < q.tail and low not in q.holes and self._read(_main_key(q, low)).id == ident:
            return low
        return None

    def move(self, src: str, dst: str, ids: Sequence[int] | None = None) -> int:
        dst, ids = as_queue_name(dst), checked_ids(ids)
        with self._transaction("move") as st:
            s = st.queues.get(src)
            if s is None:
                return 0
            wanted = None if ids is None else set(ids)
            chosen = sorted(i for i, a in s.aside.items()
                            if a.owner is None and (wanted is None or i in wanted))
            # Chosen before anything is carried: a queue moved into itself gets its records
            # back at its tail, where they must not be found and carried again.
            end = s.tail
            found = [] if wanted is None else [
                p for p in map(partial(self._find, s), sorted(wanted - set(chosen)))
                if p is not None]
            moved = 0
            for ident in chosen:
                a = s.aside.pop(ident)
                self._carry(st, s, dst, self._read(a.key, a))
                moved += 1
            if wanted is None:
                for position in range(s.head, end):
                    if position not in s.holes:
                        self._carry(st, s, dst, self._read(_main_key(s, position)))
                        moved += 1
                s.head, s.holes = end, set()
            else:
                for position in found:
                    self._carry(st, s, dst, self._read(_main_key(s, position)))
                    s.holes.add(position)
                    moved += 1
            self._changed = self._changed or moved > 0
            return moved

    def _carry(self, st: _State, s: _Queue, dst: str, rec: StoredRecord) -> None:
        s.ready -= 1
        s.stored -= len(rec.data)
        s.raw -= rec.raw_size
        self._freed(len(rec.data))
        self._append(st, dst, [rec._replace(attempts=0, reason=None)])

    def purge(self, queue: str) -> int:
        with self._transaction("purge") as st:
            q = st.queues.get(queue)
            if q is None:
                return 0
            removed = q.ready + q.leased
            self._freed(q.stored, q.live())
            # Emptied but still listed; its main line goes on from the tail, so no key of
            # the records purged is ever written again.
            q.head, q.holes, q.aside = q.tail, set(), {}
            q.ready = q.leased = q.stored = q.raw = 0
            self._changed = True
            return removed

    def queues(self) -> list[str]:
        return sorted(self._state.queues)

    def get_meta(self, key: str) -> bytes | None:
        return self._state.meta.get(key)

    def set_meta(self, key: str, value: bytes) -> None:
        key, blob = as_meta_key(key), as_bytes(value, "a metadata value")
        with self._transaction("set_meta") as st:
            st.meta[key] = blob
            self._changed = True

class DBMEngine(SharedEngine):
    """A queue in a directory of ``dbm`` files, for one process (see the module).

    ``fsync=True`` (what ``durability="fsync"`` picks) fsyncs the files and
    the directory before each changing call returns. A queue whose newest state
    is damaged (a power cut without fsync, or damage to the files) raises
    :class:`CorruptError`; ``recover=True`` opens it at the state before.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False,
                 read_only: bool = False, recover: bool = False) -> None:
        if not isinstance(recover, bool):
            raise ConfigurationError(f"recover must be True or False, not {recover!r}")
        spath = os.fspath(path)
        super().__init__(spath, read_only=read_only,
                         opener=lambda: _DBMStore(spath, read_only=read_only, fsync=fsync,
                                                  recover=recover),
                         flushes={"fsync": bool(fsync)})

