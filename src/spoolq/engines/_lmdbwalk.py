"""How the LMDB engine walks a queue: cursors over one queue's keys, its ready and
delayed records merged in id order, and delayed records moved back once due.

Every function runs inside a transaction the caller holds and reads through
cursors, never a whole queue at once. A delayed record sits in ``delayed`` under
(queue, visible_at, id), and ``delayed_ids`` maps its (queue, id) to that key,
so delayed records can be walked in id order too.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from . import _lmdbformat as fmt

if TYPE_CHECKING:
    import lmdb

    Txn = lmdb.Transaction[bytes]
    Db = lmdb._Database

__all__ = ["CHUNK", "CHUNK_BYTES", "clear", "delay", "in_order", "index_delayed", "prefixed",
           "promote"]

CHUNK = 512  # records read per cursor pass when walking a whole queue
CHUNK_BYTES = 1 << 20  # and their values' bytes, past which a pass ends early


def promote(txn: Txn, ready: Db, delayed: Db, ids: Db, number: int, now: float) -> None:
    """Move queue ``number``'s delayed records that are due by ``now`` back into ``ready``."""
    prefix = fmt.U32.pack(number)
    cur = txn.cursor(delayed)
    more = cur.set_range(prefix)
    while more:
        key = cur.key()
        if not key.startswith(prefix):
            break
        _, visible_at, ident = fmt.DELAYED.unpack(key)
        if visible_at > now:
            break
        id_key = fmt.KEY.pack(number, ident)
        txn.put(id_key, cur.value(), db=ready)
        txn.delete(id_key, db=ids)
        more = cur.delete()


def delay(txn: Txn, delayed: Db, ids: Db, number: int, ident: int, visible_at: float,
          value: bytes) -> None:
    """Put record ``ident`` of queue ``number`` among the delayed ones, due at ``visible_at``."""
    key = fmt.DELAYED.pack(number, visible_at, ident)
    txn.put(key, value, db=delayed)
    txn.put(fmt.KEY.pack(number, ident), key, db=ids)


def index_delayed(txn: Txn, delayed: Db, ids: Db) -> int:
    """Fill ``ids`` from every delayed record (a format 1 file has no such index); return
    how many there are."""
    entries = 0
    for key in txn.cursor(delayed).iternext(values=False):
        number, _, ident = fmt.DELAYED.unpack(key)
        txn.put(fmt.KEY.pack(number, ident), key, db=ids)
        entries += 1
    return entries


def clear(txn: Txn, db: Db, number: int) -> int:
    """Delete queue ``number``'s entries in ``db``; return how many there were."""
    prefix = fmt.U32.pack(number)
    cur = txn.cursor(db)
    more = cur.set_range(prefix)
    removed = 0
    while more and cur.key().startswith(prefix):
        more = cur.delete()
        removed += 1
    return removed


def prefixed(txn: Txn, db: Db, number: int, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of queue ``number``'s entries in ``db`` in key order, from ``start`` on."""
    prefix = fmt.U32.pack(number)
    cur = txn.cursor(db)
    more = cur.set_range(max(prefix, start))
    while more:
        key = cur.key()
        if not key.startswith(prefix):
            return
        yield key, cur.value()
        more = cur.next()


def _chunked(txn: Txn, db: Db, number: int, first: int) -> Iterator[tuple[int, bytes, bytes]]:
    """(id, key, value) of queue ``number``'s entries in ``db`` (keyed by queue and id)
    from id ``first`` on, read in chunks, each with a fresh cursor, so the caller may
    delete or add entries between items."""
    start = fmt.KEY.pack(number, first) if first else b""
    while True:
        chunk: list[tuple[bytes, bytes]] = []
        size = 0
        for entry in prefixed(txn, db, number, start):
            chunk.append(entry)
            size += len(entry[1])
            if len(chunk) == CHUNK or size >= CHUNK_BYTES:
                break  # large records: a chunk of them must not fill the memory
        if not chunk:
            return
        for key, value in chunk:
            yield fmt.KEY.unpack(key)[1], key, value
        start = fmt.KEY.pack(number, fmt.KEY.unpack(chunk[-1][0])[1] + 1)


def _delayed_by_id(txn: Txn, delayed: Db, ids: Db, number: int,
                   first: int) -> Iterator[tuple[int, bytes, Db, bytes]]:
    """Queue ``number``'s delayed records as (id, key, db, value) in id order, through
    the ``ids`` index."""
    for ident, _, key in _chunked(txn, ids, number, first):
        value = txn.get(key, db=delayed)
        if value is not None:
            yield ident, key, delayed, value


def in_order(txn: Txn, ready: Db, delayed: Db, ids: Db | None, number: int,
             limit: int | None = None, first: int = 0) -> Iterator[tuple[int, bytes, Db, bytes]]:
    """Queue ``number``'s ready records, delayed ones included, as (id, key, db, value)
    in id order, from id ``first`` on and below ``limit``. Both kinds are read in chunks
    through the id-ordered sub-databases, so the caller may delete or add records
    between items. Without the ``ids`` index (a format 1 file opened read-only) the
    delayed records are loaded first."""
    in_line = ((ident, key, ready, value) for ident, key, value in
               _chunked(txn, ready, number, first))
    held: Iterable[tuple[int, bytes, Db, bytes]]
    if ids is None:
        held = sorted(item for item in ((fmt.DELAYED.unpack(key)[2], key, delayed, value)
                                        for key, value in prefixed(txn, delayed, number))
                      if item[0] >= first)
    else:
        held = _delayed_by_id(txn, delayed, ids, number, first)

    for item in heapq.merge(in_line, held, key=operator.itemgetter(0)):
        if limit is not None and item[0] >= limit:
            return
        yield item
