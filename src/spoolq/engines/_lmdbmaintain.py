"""How the LMDB engine moves a queue's ready records to another queue and purges a queue.

:class:`Maintaining` is a mixin of the LMDB engine's store; every call is one write
transaction of the store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from . import _lmdbformat as fmt
from . import _lmdbwalk as walk
from ._checks import as_queue_name, checked_ids
from ._lmdbowners import LeaseOwners
from .base import StoredRecord

if TYPE_CHECKING:
    import lmdb

    Txn = lmdb.Transaction[bytes]
    Db = lmdb._Database

__all__ = ["Maintaining"]

T = TypeVar("T")


class Maintaining:
    """Move and purge, for the LMDB store."""

    if TYPE_CHECKING:
        _ready: Db
        _delayed: Db
        _leased: Db

        def _index(self) -> Db: ...

        def _leases(self) -> LeaseOwners: ...

        def _write(self, what: str, body: Callable[[Txn], T]) -> T: ...

        def _record(self, ident: int, value: bytes) -> StoredRecord: ...

        def _queue(self, txn: Txn, name: str) -> fmt.QueueRow | None: ...

        def _new_queue(self, txn: Txn, name: str) -> fmt.QueueRow: ...

        def _save(self, txn: Txn, name: str, q: fmt.QueueRow) -> None: ...

        def _bump(self, txn: Txn, counter: bytes, by: int) -> int: ...

        def _add(self, txn: Txn, name: str, q: fmt.QueueRow,
                 recs: Sequence[StoredRecord]) -> int: ...

    def move(self, src: str, dst: str, ids: Sequence[int] | None = None) -> int:
        dst, ids = as_queue_name(dst), checked_ids(ids)

        def body(txn: Txn) -> int:
            s = self._queue(txn, src)
            if s is None:
                return 0
            d = s if dst == src else self._new_queue(txn, dst)
            index = self._index()
            moved = 0

            def carry(ident: int, key: bytes, db: Db, value: bytes) -> None:
                nonlocal moved
                rec = self._record(ident, value)
                txn.delete(key, db=db)
                if db is self._delayed:
                    txn.delete(fmt.KEY.pack(s.number, ident), db=index)
                s.ready -= 1
                s.stored -= len(rec.data)
                s.raw -= rec.raw_size
                self._add(txn, dst, d, [rec._replace(attempts=0, reason=None)])
                moved += 1

            # Only ids given out before the move: moving a queue onto itself ends, and moves
            # no record a second time under the id it just got.
            limit = self._bump(txn, b"next_id", 0)
            if ids is None:
                for item in walk.in_order(txn, self._ready, self._delayed, index, s.number,
                                          limit):
                    carry(*item)
            else:
                for ident in sorted({i for i in ids if 0 < i < limit}):
                    key = fmt.KEY.pack(s.number, ident)
                    value = txn.get(key, db=self._ready)
                    if value is not None:
                        carry(ident, key, self._ready, value)
                        continue
                    held = txn.get(key, db=index)
                    found = None if held is None else txn.get(held, db=self._delayed)
                    if held is not None and found is not None:
                        carry(ident, held, self._delayed, found)
            if moved:
                self._save(txn, src, s)
            return moved

        return self._write("move", body)

    def purge(self, queue: str) -> int:
        def body(txn: Txn) -> int:
            q = self._queue(txn, queue)
            if q is None:
                return 0
            removed = sum(walk.clear(txn, db, q.number)
                          for db in (self._ready, self._delayed, self._leased))
            walk.clear(txn, self._index(), q.number)
            self._leases().clear(txn, q.number)
            self._save(txn, queue, fmt.QueueRow(q.number))  # empty, and still listed
            return removed

        return self._write("purge", body)
