"""How the LMDB engine moves a queue's ready records to another queue and purges a queue.

:class:`Maintaining` is a mixin of the LMDB engine's store; every call is one write
transaction of the store.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
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

        def _add_values(self, txn: Txn, name: str, q: fmt.QueueRow, values: Sequence[bytes],
                        stored: int, raw: int) -> int: ...

    def move(self, src: str, dst: str, ids: Sequence[int] | None = None) -> int:
        dst, ids = as_queue_name(dst), checked_ids(ids)

        def body(txn: Txn) -> int:
            s = self._queue(txn, src)
            if s is None:
                return 0
            d = s if dst == src else self._new_queue(txn, dst)
            # Only ids given out before the move: moving a queue onto itself ends, and moves
            # no record a second time under the id it just got.
            limit = self._bump(txn, b"next_id", 0)
            moved = 0
            for chunk in _chunks(self._chosen(txn, s.number, ids, limit)):
                self._carry(txn, s, dst, d, chunk)
                moved += len(chunk)
            if moved:
                self._save(txn, src, s)
            return moved

        return self._write("move", body)

    def _chosen(self, txn: Txn, number: int, ids: Sequence[int] | None,
                limit: int) -> Iterator[tuple[int, bytes, Db, bytes]]:
        """Queue ``number``'s ready records to move, (id, key, db, value) in id order:
        all of them, or those among ``ids``; each below id ``limit``."""
        index = self._index()
        if ids is None:
            yield from walk.in_order(txn, self._ready, self._delayed, index, number, limit)
            return
        for ident in sorted({i for i in ids if 0 < i < limit}):
            key = fmt.KEY.pack(number, ident)
            value = txn.get(key, db=self._ready)
            if value is not None:
                yield ident, key, self._ready, value
                continue
            held = txn.get(key, db=index)
            found = None if held is None else txn.get(held, db=self._delayed)
            if held is not None and found is not None:
                yield ident, held, self._delayed, found

    def _carry(self, txn: Txn, s: fmt.QueueRow, dst: str, d: fmt.QueueRow,
               chunk: Sequence[tuple[int, bytes, Db, bytes]]) -> None:
        """Delete a chunk of queue ``s``'s records and append them to ``dst`` (row ``d``)
        as new records, attempts and reason cleared: one write of ``dst``'s row a chunk
        (``s``'s row is counted here, and written once the move ends)."""
        index = self._index()
        values: list[bytes] = []
        stored = raw = 0
        plain = fmt.unpack_plain
        for ident, key, db, value in chunk:
            try:
                rec = plain(ident, value) or self._record(ident, value)
            except struct.error:
                rec = self._record(ident, value)  # which names the damage
            txn.delete(key, db=db)
            if db is self._delayed:
                txn.delete(fmt.KEY.pack(s.number, ident), db=index)
            values.append(value if rec.attempts == 0 and rec.reason is None
                          else fmt.pack(rec._replace(attempts=0, reason=None)))
            stored += len(rec.data)
            raw += rec.raw_size
        s.ready -= len(values)
        s.stored -= stored
        s.raw -= raw
        self._add_values(txn, dst, d, values, stored, raw)

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


def _chunks(items: Iterable[tuple[int, bytes, Db, bytes]]
            ) -> Iterator[list[tuple[int, bytes, Db, bytes]]]:
    """``items`` in lists of up to :data:`~._lmdbwalk.CHUNK` records and about 1 MiB of
    values, so a move holds one chunk in memory, never the queue."""
    chunk: list[tuple[int, bytes, Db, bytes]] = []
    size = 0
    for item in items:
        chunk.append(item)
        size += len(item[3])
        if len(chunk) >= walk.CHUNK or size >= walk.CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk
