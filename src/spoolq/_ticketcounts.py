"""Which group-commit tickets a failed write settles, from each ticket's count of
records not yet stored (see :class:`spoolq.groupcommit.GroupCommit`)."""

from __future__ import annotations

from .groupcommit import GroupCommit, Ticket

__all__ = ["errors_of", "keep_waiting"]


def errors_of(tickets: list[Ticket], error: BaseException | None,
              counts: list[int]) -> list[BaseException | None]:
    """Each ticket's ``error``, given each ticket's count of records not stored: a ticket
    whose records were all stored (or handed out from the buffer) gets none, as its put
    is in the queue, and a caller who put it again would store it twice."""
    return [error if n else None for n in counts]


def keep_waiting(group: GroupCommit, records: list[bytes], sizes: list[int],
                 tickets: list[Ticket], counts: list[int]) -> tuple[list[Ticket], list[int]]:
    """Put back the ``records`` a failed flush did not store, for the next flush, with the
    tickets that have records among them; return the others (their puts are stored, or
    their records were handed out from the buffer: they are settled now, without an
    error) and their counts, all 0."""
    waiting = [(t, n) for t, n in zip(tickets, counts, strict=True) if n]
    group.put_back(records, sizes, tickets=[t for t, _n in waiting],
                   counts=[n for _t, n in waiting])
    done = [t for t, n in zip(tickets, counts, strict=True) if not n]
    return done, [0] * len(done)
