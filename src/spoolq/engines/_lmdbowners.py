"""The LMDB engine's count of each owner's leases (format 3): ``lease_owners`` maps
(queue number + owner) -> how many of the queue's records that owner holds, so ``owners``
reads one entry per owner rather than every leased record. An owner too long for a key,
which only an earlier version stored, is keyed by its SHA-256 and follows the count in
the value. The counts change in the transaction that changes ``leased``; a queue whose
row a process of an earlier release wrote (see :class:`~._lmdbformat.QueueRow`) is counted
anew at its next write.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING

from . import _lmdbformat as fmt
from . import _lmdbwalk as walk

if TYPE_CHECKING:
    import lmdb

    Txn = lmdb.Transaction[bytes]
    Db = lmdb._Database

__all__ = ["LeaseOwners", "count_leases"]


class LeaseOwners:
    """The ``lease_owners`` sub-database of one open file."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def count(self, txn: Txn, number: int, owner: bytes, by: int) -> None:
        """Add ``by`` (negative: take away) to the leases ``owner`` holds in queue ``number``."""
        key, tail = fmt.owner_key(number, owner)
        old = txn.get(key, db=self.db)
        held = (0 if old is None else fmt.U64.unpack_from(old)[0]) + by
        if held > 0:
            txn.put(key, fmt.U64.pack(held) + tail, db=self.db)
        elif old is not None:
            txn.delete(key, db=self.db)

    def uncount(self, txn: Txn, number: int, owners: Iterable[str]) -> None:
        """Take one lease away from each owner in ``owners`` (once per lease)."""
        tally: dict[str, int] = {}
        for owner in owners:
            tally[owner] = tally.get(owner, 0) + 1
        for owner, n in tally.items():
            self.count(txn, number, owner.encode(), -n)

    def held(self, txn: Txn, number: int) -> dict[str, int]:
        """How many of queue ``number``'s records each owner holds."""
        prefix = fmt.U32.pack(number)
        cur = txn.cursor(self.db)
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
        walk.clear(txn, self.db, number)


    def recount(self, txn: Txn, leased: Db, q: fmt.QueueRow, path: str) -> None:
        """Count queue ``q``'s leases anew from its leased records, and set its
        ``soonest`` to their earliest end: its row is ``stale``."""
        self.clear(txn, q.number)
        tally: dict[str, int] = {}
        soonest = math.inf
        for key, value in walk.prefixed(txn, leased, q.number):
            owner, until, _ = fmt.unpack_leased(path, fmt.KEY.unpack(key)[1], value)
            tally[owner] = tally.get(owner, 0) + 1
            soonest = min(soonest, until)
        for owner, n in tally.items():
            self.count(txn, q.number, owner.encode(), n)
        q.soonest, q.stale = soonest, False


def count_leases(txn: Txn, leased: Db, owners: LeaseOwners, queues: Db, path: str) -> int:
    """Fill ``owners`` from every leased record (a file of an earlier format has no such
    counts), and give every queue row its ``soonest``; return how many leases there are."""
    entries = 0
    soonest: dict[int, float] = {}
    for key, value in txn.cursor(leased):
        number, ident = fmt.KEY.unpack(key)
        owner, until, _ = fmt.unpack_leased(path, ident, value)
        owners.count(txn, number, owner.encode(), 1)
        soonest[number] = min(soonest.get(number, math.inf), until)
        entries += 1
    for name, value in list(txn.cursor(queues)):  # a row per queue: no record
        try:
            q = fmt.queue_row(value)
        except struct.error:
            continue  # damaged: reading the queue says so
        if q.stale:
            q.soonest, q.stale = soonest.get(q.number, math.inf), False
            txn.put(name, q.packed(), db=queues)
    return entries
