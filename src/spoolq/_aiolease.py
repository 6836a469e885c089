"""How the asyncio queue leases items and settles them: leases, ``ack`` and ``nack``, the
``leased`` block, and the calls on dead letters and on every item (``requeue_dead``,
``purge``).

:class:`Leasing` is a part of :class:`spoolq.aio.Queue`, kept in its own module; it works
on the queue's state on the queue's event loop, as the rest of the queue does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .core import QueueCore
from .message import Message, Taken, log_failed_nack
from .settings import check_count, check_ids, check_seconds

__all__ = ["Leasing"]

T = TypeVar("T")
R = TypeVar("R")


class Leasing(Generic[T]):
    """Leases, their settling, and the calls on dead letters and on every item."""

    # Set up by Queue.__init__.
    _core: QueueCore
    # Defined by Queue and its other parts.
    _enter: Callable[[], None]
    _wake: Callable[[], None]
    _take: Callable[[int | None, float | None, float | None], Coroutine[Any, Any, list[Taken]]]
    _await_give_backs: Callable[[], Coroutine[Any, Any, None]]

    if TYPE_CHECKING:
        async def _call(self, fn: Callable[..., R], *args: Any) -> R: ...

        @property
        def _unsettled(self) -> int: ...

    async def lease(self, *, ttl: float = 30.0, timeout: float | None = None) -> Message[T]:
        """Lease the oldest item for ``ttl`` seconds; settle it with ``ack`` or ``nack``.

        Until then no other consumer sees it; if it is not settled in time it
        is delivered again with ``attempts + 1``. Waits like :meth:`get`;
        raises :class:`Empty` when ``timeout`` passes.
        """
        return (await self.lease_many(1, ttl=ttl, timeout=timeout))[0]

    async def lease_many(self, n: int, *, ttl: float = 30.0,
                         timeout: float | None = None) -> list[Message[T]]:
        """Lease up to ``n`` items: waits for one, then takes what is ready up to ``n``."""
        check_seconds("ttl", ttl, positive=True)
        check_count("n", n, 1)
        return self._core.messages(await self._take(n, timeout, ttl))

    async def ack(self, *messages: Message[T]) -> None:
        """Remove leased items for good; raises :class:`LeaseError` for a lease not held."""
        self._enter()
        try:
            await self._call(self._core.ack, messages)
        finally:
            self._wake()  # join(): also when it raised for some, it settled the others

    async def nack(self, *messages: Message[T], delay: float = 0.0) -> None:
        """Return leased items to their place in line, visible again after ``delay`` seconds."""
        check_seconds("delay", delay)
        self._enter()
        await self._call(self._core.nack, messages, delay)

    @asynccontextmanager
    async def leased(self, *, ttl: float = 30.0,
                     timeout: float | None = None) -> AsyncIterator[T]:
        """Lease an item for the ``async with`` block: ack on success, nack (and re-raise)
        on error.

        The block's exception always propagates: if the nack fails (the lease expired, or
        the queue was closed meanwhile, which released the lease) that is logged."""
        msg = await self.lease(ttl=ttl, timeout=timeout)
        try:
            yield msg.item
        except BaseException:
            try:
                await asyncio.shield(self.nack(msg))
            except Exception as exc:
                log_failed_nack(msg, exc)
            raise
        await self.ack(msg)

    async def requeue_dead(self, ids: Iterable[int] | None = None) -> int:
        """Move dead letters (all, or those with ``ids``) back to the tail of the queue;
        return how many moved. An id that is not an int raises TypeError, a negative one
        ValueError, and nothing moves."""
        wanted = check_ids(ids)
        self._enter()
        return await self._call(self._core.requeue_dead, wanted)

    async def purge(self, *, dead: bool = False) -> int:
        """Delete every item, ready and leased (or every dead letter); return how many.

        Items a cancelled get is giving back are deleted too: it waits for them."""
        self._enter()
        if self._unsettled and not dead:
            await self._await_give_backs()
        removed = await self._call(partial(self._core.purge, dead=dead))
        if removed and not dead:
            self._wake()  # puts waiting for room, and join() when nothing is unfinished now
        return removed
