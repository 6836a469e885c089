"""How the LMDB engine walks a queue: cursors over one queue's keys, its ready and
delayed records merged in id order, and delayed records moved back once due.

Every function runs inside a transaction the caller holds and reads through
cursors, never a whole queue at once (the delayed records of a queue excepted,
see :func:`in_order`).
"""

from __future__ import annotations

import heapq
import itertools
import operator
from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import _lmdbformat as fmt

if TYPE_CHECKING:
    import lmdb

    Txn = lmdb.Transaction[bytes]
    Db = lmdb._Database

__all__ = ["in_order", "prefixed", "promote"]

_CHUNK = 512  # records read per cursor pass when walking a whole queue


def promote(txn: Txn, ready: Db, delayed: Db, number: int, now: float) -> None:
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
        txn.put(fmt.KEY.pack(number, ident), cur.value(), db=ready)
        more = cur.delete()


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


def in_order(txn: Txn, ready: Db, delayed: Db, number: int, limit: int | None = None,
             first: int = 0) -> Iterator[tuple[int, bytes, Db, bytes]]:
    """Queue ``number``'s ready records, delayed ones included, as (id, key, db, value)
    in id order, from id ``first`` on and below ``limit``. The ready ones are read in
    chunks, each with a fresh cursor, so the caller may delete or add records between
    items; the delayed ones are loaded first."""
    held = sorted(item for item in ((fmt.DELAYED.unpack(key)[2], key, delayed, value)
                                    for key, value in prefixed(txn, delayed, number))
                  if item[0] >= first)

    def in_line() -> Iterator[tuple[int, bytes, Db, bytes]]:
        start = fmt.KEY.pack(number, first) if first else b""
        while True:
            chunk = list(itertools.islice(prefixed(txn, ready, number, start), _CHUNK))
            if not chunk:
                return
            for key, value in chunk:
                yield fmt.KEY.unpack(key)[1], key, ready, value
            start = fmt.KEY.pack(number, fmt.KEY.unpack(chunk[-1][0])[1] + 1)

    for item in heapq.merge(in_line(), held, key=operator.itemgetter(0)):
        if limit is not None and item[0] >= limit:
            return
        yield item
