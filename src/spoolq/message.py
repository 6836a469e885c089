"""Message: a leased item, as the queues hand it out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .engines.base import StoredRecord
from .errors import ClosedError, LeaseError

__all__ = ["Message", "Taken", "log_failed_nack", "messages_for"]

T = TypeVar("T")
log = logging.getLogger("spoolq")
Taken = tuple[StoredRecord, Any]
"""A record taken from the engine with its decoded item."""


@dataclass(frozen=True, slots=True)
class Message(Generic[T]):
    """A leased item: settle it with ``ack`` or ``nack`` on the queue that leased it.

    ``attempts`` is 1 on the first delivery and grows with each redelivery;
    ``enqueued_at`` is the wall-clock time (``time.time()``) of the put.

    Messages are equal when they stand for the same delivery (queue, id, attempts,
    ``enqueued_at`` and the queue handle that leased it): the item takes no part, so a copy
    or an unpickled message equals its original whatever its item (a NaN, an array), and
    messages of two files are never equal. A message is hashable whatever its item
    (a dict, a list), so messages can be kept in a set or as dict keys while in flight.
    """

    item: T = field(compare=False)
    id: int
    attempts: int
    enqueued_at: float
    queue: str = field(repr=False)
    _owner: str = field(repr=False)
    _sizes: tuple[int, int] = field(default=(0, 0), repr=False, compare=False)


_MESSAGE_SLOTS = tuple(Message.__dict__[name].__set__ for name in (
    "item", "id", "attempts", "enqueued_at", "queue", "_owner", "_sizes"))


def messages_for(taken: Sequence[Taken], queue: str, owner: str) -> list[Message[Any]]:
    """Messages for leased records, filled slot by slot: half the cost of calling the
    frozen dataclass's ``__init__`` for each, which matters for batches of leases."""
    new = object.__new__
    s_item, s_id, s_attempts, s_enqueued, s_queue, s_owner, s_sizes = _MESSAGE_SLOTS
    out: list[Message[Any]] = []
    for rec, item in taken:
        msg = new(Message)
        s_item(msg, item)
        s_id(msg, rec.id)
        s_attempts(msg, rec.attempts)
        s_enqueued(msg, rec.enqueued_at)
        s_queue(msg, queue)
        s_owner(msg, owner)
        s_sizes(msg, (len(rec.data), rec.raw_size))
        out.append(msg)
    return out


def log_failed_nack(msg: Message[Any], error: Exception) -> None:
    """Log why ``leased()`` could not nack ``msg`` after its block raised: the block's
    own exception is the one that propagates."""
    if isinstance(error, LeaseError):
        log.warning("spoolq: message %d: lease lost before it could be nacked", msg.id)
    elif isinstance(error, ClosedError):
        # Expected, not a fault: closing the queue gave the lease back.
        log.warning("spoolq: message %d could not be nacked after its block raised: the "
                    "queue %r was closed, which gave its lease back", msg.id, msg.queue)
    else:
        log.warning("spoolq: message %d could not be nacked after its block raised", msg.id,
                    exc_info=error)
