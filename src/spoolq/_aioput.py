"""How the async queue writes a put: on the worker thread, group-committed with the puts
of other tasks, or, with ``calls_on_loop`` and an engine whose calls are brief, on the
event loop itself.

:class:`Putting` is a part of :class:`spoolq.aio.Queue`, kept in its own module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from ._aiowait import Turn
from ._atonce import LOOP_BATCH, NoWait
from .core import QueueCore
from .groupcommit import Ticket
from .worker import Worker

__all__ = ["Putting"]



class Putting:
    """The write of an async put, once there is room for it."""

    # Set up by Queue.__init__.
    _core: QueueCore
    _worker: Worker
    _loop: asyncio.AbstractEventLoop
    _inline: bool
    _no_wait: NoWait | None
    _line: dict[Turn, None]
    # Defined by Queue's other parts.
    _wait_for_room: Callable[[int, float | None], Coroutine[Any, Any, None]]
    _wake: Callable[[], None]
    _wake_for_buffered: Callable[[], None]
    _pass_turn: Callable[[], None]

    async def _put(self, records: list[bytes], sizes: list[int], timeout: float | None) -> None:
        await self._wait_for_room(len(records), timeout)
        if self._inline:
            self._core.put_now(records, sizes)
            if self._core.buffered:
                self._wake_for_buffered()
            return
        if (self._no_wait is not None and len(records) <= LOOP_BATCH
                and not self._others_ready()
                and self._core.write_alone(records, sizes, self._no_wait)):
            return  # nothing else to run, nothing to join: a transaction of its own
        fut: asyncio.Future[None] = self._loop.create_future()
        ticket = Ticket(fut)
        pending = self._core.submit(records, sizes, ticket)
        try:
            if not self._core.flush_due(pending):
                fut.set_result(None)
                self._wake_for_buffered()
            elif self._no_wait is not None:
                await self._flush_on_loop(ticket, self._no_wait)
            else:
                if self._core.schedules_flush(pending, len(records)):
                    self._worker.post(self._core.flush)
                if self._line:
                    # A take sent now runs after that flush (or flushes the records
                    # itself), without waiting for its wake-up.
                    self._pass_turn()
            await fut
        except asyncio.CancelledError:
            if self._core.withdraw(ticket):  # not written: as if never put
                self._wake()
            raise

    async def _flush_on_loop(self, ticket: Ticket, no_wait: NoWait) -> None:
        """Write the batch ``ticket`` is in on the loop, where the engine's calls are brief
        when nothing else is under way; else have the worker write it."""
        await asyncio.sleep(0)  # the puts of the other tasks ready to run join the batch
        core = self._core
        if ticket.done:
            return
        if core.group.pending() > LOOP_BATCH or not core.flush_alone(no_wait):
            self._worker.post(core.flush)
            if self._line:
                self._pass_turn()

    def _others_ready(self) -> bool:
        """Whether other callbacks wait to run on the loop (asyncio's own loop tells; any
        other counts as yes)."""
        return bool(getattr(self._loop, "_ready", True))

