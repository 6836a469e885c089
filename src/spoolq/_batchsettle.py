"""What becomes of a batch the ``Batcher`` leased: sent to the sink in runs of items
delivered as often, acked when the sink took it, nacked (back to its place) when it did
not, the acks and nacks the engine refused kept and tried again before the next lease,
and the retry delay.

:class:`BatchSettling` is a part of :class:`spoolq.batcher.Batcher`, kept in its own
module; it works on the Batcher's state on its event loop, under its flush lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from .aio import Queue
from .errors import ClosedError, LeaseError
from .message import Message

__all__ = ["BatchSettling", "TakenThenCancelled"]

T = TypeVar("T")


class TakenThenCancelled(asyncio.CancelledError):
    """The sending task was cancelled while (or just as) an async sink returned without
    error: the sink took the batch, which is acked before ``cancelled`` goes on."""

    def __init__(self, cancelled: asyncio.CancelledError) -> None:
        super().__init__(*cancelled.args)
        self.cancelled = cancelled


class BatchSettling(Generic[T]):
    """Sending and settling leased batches, the settling to try again, the retry delay."""

    # Set up by Batcher.__init__.
    name: str
    _flushes: int
    _items: int
    _failures: int
    _last_flush_time: float | None
    log: logging.Logger | logging.LoggerAdapter[Any]
    _retry_delay: float
    _max_retry_delay: float
    _lease_ttl: float
    _wake: asyncio.Event  # wakes the background flusher
    _retry_at: float  # time.monotonic() before which the background flusher sends nothing
    _streak: int  # failures in a row
    _retry_size: int  # the size of the failed batch to lease again, if any
    # Acks (True) and nacks the engine refused, tried again before the next lease.
    _pending: list[tuple[bool, list[Message[T]]]]
    # Defined by Batcher.
    _send: Callable[[list[T], float], Coroutine[Any, Any, None]]

    async def _send_runs(self, queue: Queue[T], msgs: list[Message[T]],
                         deadline: float) -> bool:
        """Send leased items as batches of items delivered as often, in order (a batch an
        earlier run or a dead process left leads newer items); False when one failed or
        could not be settled: the items after it are given back."""
        done = 0  # items acked, given back or left to _pending
        try:
            for run in _runs(msgs):
                try:
                    await self._send([m.item for m in run], deadline)
                except TakenThenCancelled as taken:
                    self._took(run)
                    done += len(run)
                    # Else the batch would go back and be sent again.
                    await asyncio.shield(self._settle(queue, run, ack=True))
                    # The caller's own: asyncio.timeout() takes only a CancelledError
                    # itself for its expiry.
                    raise taken.cancelled from None
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self._failures += 1
                    delay = self._back_off()
                    self.log.exception("batcher %r: flushing %d items failed; retrying in "
                                       "%.1fs", self.name, len(run), delay)
                    max_attempts = queue._core.settings.max_attempts
                    if max_attempts is None or run[0].attempts < max_attempts:
                        self._retry_size = len(run)  # else the nack dead-letters it
                    rest, done = msgs[done:], len(msgs)
                    await self._settle(queue, rest, ack=False)
                    # The flusher may be waiting out a whole flush_interval: have it wait
                    # for the retry delay instead.
                    self._wake.set()
                    return False
                self._took(run)
                done += len(run)
                if not await self._settle(queue, run, ack=True):
                    rest, done = msgs[done:], len(msgs)
                    await self._settle(queue, rest, ack=False)
                    return False
        except GeneratorExit:
            raise  # the coroutine is being closed: it may not await
        except BaseException:
            # Cancelled, or the sink raised a BaseException that is not an Exception: what
            # the sink did not take goes back to its place now, not when its lease runs out.
            await asyncio.shield(self._settle(queue, msgs[done:], ack=False))
            raise
        return True

    def _took(self, run: list[Message[T]]) -> None:
        """Count a batch the sink took: a flush, whatever becomes of its ack."""
        self._flushes += 1
        self._items += len(run)
        self._last_flush_time = time.time()

    def _back_off(self) -> float:
        """Count a failure in a row and set the time of the retry; return its delay."""
        self._streak += 1
        # A float power: an int one past 2**1023 cannot be multiplied by a float
        # (OverflowError), and a sink may stay down that long.
        delay = min(self._retry_delay * 2.0 ** min(self._streak - 1, 1000),
                    self._max_retry_delay)
        self._retry_at = time.monotonic() + delay
        return delay

    async def _settle(self, queue: Queue[T], msgs: list[Message[T]], *, ack: bool) -> bool:
        """Ack a batch the sink took, or nack (back to its place in its order) one it did
        not take. False when the engine refused (say, its server is away): the call is
        kept in ``_pending`` and tried again, after the retry delay, before anything else.
        A closed queue raises ClosedError: its close gave the leases back."""
        if not msgs:
            return True
        try:
            if ack:
                await queue.ack(*msgs)
            else:
                await queue.nack(*msgs)
        except LeaseError as exc:
            # The lease ran out meanwhile: expiry put the batch back in its place, and
            # another handle may have leased it since. Or a try of this call before,
            # whose reply a lost connection cut off, settled it. After an ack, the sink
            # has it all the same: a flush, not a failure to retry.
            what = "ack" if ack else "nack"
            self.log.warning("batcher %r: a batch of %d items was no longer leased at its "
                             "%s: its lease ran out (lease_ttl=%ss) and it is delivered "
                             "again, or an earlier %s whose reply was lost settled it: %s",
                             self.name, len(msgs), what, self._lease_ttl, what, exc)
        except ClosedError:
            raise
        except Exception:
            wait = self._retry_at - time.monotonic()
            # A nack after a failed sink call: its retry delay is running already.
            delay = wait if wait > 0 else self._back_off()
            self._pending.append((ack, msgs))
            # From flush(), the background flusher may be waiting out a whole
            # flush_interval: have it try again after the retry delay instead.
            self._wake.set()
            self.log.exception("batcher %r: the %s of a batch of %d items failed; trying "
                               "again in %.1fs (the items come back by themselves when "
                               "their lease runs out)", self.name,
                               "ack" if ack else "nack", len(msgs), delay)
            return False
        if ack:
            self._streak = 0
            self._retry_at = 0.0
        return True

    async def _settle_pending(self, queue: Queue[T]) -> bool:
        """Try again the acks and nacks the engine refused, in order; False if one fails
        again. Cancelled, it keeps the one under way and those not tried yet for the next
        call (one that went through then only meets a LeaseError, which is logged)."""
        pending, self._pending = self._pending, []
        ok = True
        try:
            while pending:
                ack, msgs = pending[0]
                ok = await self._settle(queue, msgs, ack=ack) and ok
                del pending[0]
        finally:
            self._pending.extend(pending)  # after those that failed again: in order
        return ok


def _runs(msgs: list[Message[T]]) -> list[list[Message[T]]]:
    """Split leased items, in order, where the number of deliveries changes."""
    runs: list[list[Message[T]]] = []
    for msg in msgs:
        if runs and runs[-1][-1].attempts == msg.attempts:
            runs[-1].append(msg)
        else:
            runs.append([msg])
    return runs
