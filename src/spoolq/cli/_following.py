"""Reading records page by page while other programs add and remove them anywhere.

Leased records leave their list wherever they are (an ack or a nack settles any of them)
and join it wherever their id falls (a consumer leases a record given back earlier), so
a page read at the offset where the page before ended may start past records not read
yet, or again at records read already. Records are listed in id order: each page after
the first is read starting at a record read already, in the same read as the records
after it, and goes on after the last id read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

Read = Callable[[int, int], list[T]]
"""Reads up to ``n`` records from an offset, in id order, in one transaction."""


def pages_after(read: Read[T], ident: Callable[[T], int], *, offset: int, chunk: int,
                limit: int | None, expected: int | None) -> Iterator[list[T]]:
    """The records ``read`` lists, ``chunk`` at a time: the first page at ``offset``, at
    most ``limit`` records; ``expected`` is how many the list held past ``offset`` when
    the reading began.

    Every record listed from the first read to the last is yielded once, in id order; a
    record that joins or leaves the list meanwhile may or may not be. A page after the
    first is read from the record before it (whose id was read already), found again by
    id when records before it left the list, so nothing between the two is passed over.
    The reading ends at a read that finds nothing after the last id read: a page shorter
    than asked for may be a served queue's reply, which holds the records that fit in it.
    """
    last: int | None = None
    got, left = 0, limit
    while left is None or left > 0:
        want = chunk if left is None else min(chunk, left)
        if last is None:
            page = fresh = read(want, offset)
            offset += len(page)
            full = len(page) >= want
        else:
            page, offset, full = _read_after(read, ident, want, last, offset)
            fresh = [r for r in page if ident(r) > last]
            if len(page) == 1 and not fresh and (expected is None or got < expected):
                # A served queue's reply holds the records that fit in it: this one held
                # the record read already alone, so the page goes on without it (the
                # records before it may then change between the two reads).
                page = read(want, offset)
                fresh = [r for r in page if ident(r) > last]
                offset += len(page)
                full = len(page) >= want
        if not page:
            return
        if fresh:
            yield fresh
            last = ident(fresh[-1])
            got += len(fresh)
            if left is not None:
                left -= len(fresh)
            if not full and expected is not None and got >= expected:
                return  # records added since the reading began are not chased
        elif not full and len(page) < 2:
            return  # nothing after the last record read


def _read_after(read: Read[T], ident: Callable[[T], int], want: int, last: int,
                offset: int) -> tuple[list[T], int, bool]:
    """Up to ``want`` records after the id ``last`` and the records from one whose id is at
    most ``last`` (none when they are the first listed), all in one read; the offset after
    them and whether the read gave all it was asked for. ``offset`` is where the first
    record after ``last`` was when the page before was read."""
    at = offset
    while True:
        if at == 0:
            page = read(want, 0)
            return page, len(page), len(page) >= want
        page = read(want + 1, at - 1)
        if page and ident(page[0]) <= last:
            return page, at - 1 + len(page), len(page) > want
        # Records before ``at`` left the list: where is the first after ``last`` now?
        at = _first_after(read, ident, last, at)


def _first_after(read: Read[T], ident: Callable[[T], int], last: int, hi: int) -> int:
    """The offset of the first record with an id above ``last``, searched for at most
    ``hi`` (O(log hi) reads of one record)."""
    lo = 0
    while lo < hi:
        mid = (lo + hi) // 2
        probe = read(1, mid)
        if probe and ident(probe[0]) <= last:
            lo = mid + 1
        else:
            hi = mid
    return lo
