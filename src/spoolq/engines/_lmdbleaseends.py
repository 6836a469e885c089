"""The LMDB engine's indexes of leased records (format 3): ``lease_ends`` holds a key
(queue number, the lease's end, record id) per leased record, so ``expire`` reads only
the leases that ran out; ``lease_owners`` holds (queue number + owner) -> how many of
the queue's records that owner holds, so ``owners`` reads one entry per owner (an owner
too long for a key, which only an earlier version stored, is keyed by its SHA-256 and
follows the count in the value). Both
change in the transaction that changes ``leased``; neither holds a copy of a record.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from . import _lmdbformat as fmt
from ._checks import as_float_time

if TYPE_CHECKING:
    import lmdb

    Txn = lmdb.Transaction[bytes]
    Db = lmdb._Database

__all__ = ["LeaseBook", "index_leases"]


class LeaseBook:
    """The ``lease_ends`` and ``lease_owners`` sub-databases of one open file."""

    def __init__(self, ends: Db, owners: Db) -> None:
        self.ends, self.owners_db = ends, owners

    def add(self, txn: Txn, until: float, owner: bytes, keys: Sequence[bytes]) -> None:
        """Index the records under ``keys`` (their keys in ``leased``, all of one queue),
        just leased by ``owner`` until ``until``."""
        if not keys:
            return
        end = fmt.U64.pack(fmt.sortable_time(until))
        txn.cursor(self.ends).putmulti([(key[:4] + end + key[4:], b"") for key in keys])
        self.count(txn, fmt.U32.unpack_from(keys[0])[0], owner, len(keys))

    def drop(self, txn: Txn, number: int, until: float, ident: int) -> None:
        """Forget the lease of record ``ident`` (its owner's count is the caller's)."""
        txn.delete(fmt.until_key(number, until, ident), db=self.ends)

    def count(self, txn: Txn, number: int, owner: bytes, by: int) -> None:
        """Add ``by`` (negative: take away) to the leases ``owner`` holds in queue ``number``."""
        key, tail = fmt.owner_key(number, owner)
        old = txn.get(key, db=self.owners_db)
        held = (0 if old is None else fmt.U64.unpack_from(old)[0]) + by
        if held > 0:
            txn.put(key, fmt.U64.pack(held) + tail, db=self.owners_db)
        elif old is not None:
            txn.delete(key, db=self.owners_db)

    def uncount(self, txn: Txn, number: int, owners: Iterable[str]) -> None:
        """Take one lease away from each owner in ``owners`` (once per lease)."""
        tally: dict[str, int] = {}
        for owner in owners:
            tally[owner] = tally.get(owner, 0) + 1
        for owner, n in tally.items():
            self.count(txn, number, owner.encode(), -n)

    def due(self, txn: Txn, number: int, now: float, limit: int) -> list[int]:
        """Ids of up to ``limit`` of queue ``number``'s leases that end by ``now``, those
        that end first first; none at NaN, which is no time."""
        end = as_float_time(now)
        if math.isnan(end):
            return []
        last_end = fmt.sortable_time(end)
        if end == math.inf and now != end:
            last_end -= 1  # an int beyond every float is still before an infinite lease's end
        prefix = fmt.U32.pack(number)
        last = fmt.UNTIL.pack(number, last_end, fmt.MAX_ID)
        out: list[int] = []
        cur = txn.cursor(self.ends)
        more = cur.set_range(prefix)
        while more and len(out) < limit:
            key = cur.key()
            if key > last or not key.startswith(prefix):
                break
            out.append(fmt.UNTIL.unpack(key)[2])
            more = cur.next()
        return out

    def held(self, txn: Txn, number: int) -> dict[str, int]:
        """How many of queue ``number``'s records each owner holds."""
        prefix = fmt.U32.pack(number)
        cur = txn.cursor(self.owners_db)
        more = cur.set_range(prefix)
        out: dict[str, int] = {}
        while more:
            key = cur.key()
            if not key.startswith(prefix):
                break
            value = cur.value()
            owner = key[len(prefix):] if len(value) == fmt.U64.size else value[fmt.U64.size:]
            out[owner.decode()] = fmt.U64.unpack_from(value)[0]
            more = cur.next()
        return out

    def clear(self, txn: Txn, number: int) -> None:
        """Forget every lease of queue ``number``."""
        for db in (self.ends, self.owners_db):
            prefix = fmt.U32.pack(number)
            cur = txn.cursor(db)
            more = cur.set_range(prefix)
            while more and cur.key().startswith(prefix):
                more = cur.delete()


def index_leases(txn: Txn, leased: Db, book: LeaseBook, path: str) -> int:
    """Fill ``book`` from every leased record (a file of an earlier format has no such
    indexes); return how many there are."""
    entries = 0
    for key, value in txn.cursor(leased):
        number, ident = fmt.KEY.unpack(key)
        owner, until, _ = fmt.unpack_leased(path, ident, value)
        txn.put(fmt.until_key(number, until, ident), b"", db=book.ends)
        book.count(txn, number, owner.encode(), 1)
        entries += 1
    return entries
