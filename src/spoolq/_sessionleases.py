"""What the server remembers of the leases a connection delivered: which deliveries
each connection still holds, so that a connection that ends without a goodbye gives
them back at once, and nothing more; and how a take whose reply cannot be sent is
undone.

:class:`Deliveries` is a part of :class:`spoolq.session.Session`, kept in its own
module; it runs on the server's event loop, as the rest of the session does.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._inflight import SETTLING
from .protocol import RECORD_FIELDS

if TYPE_CHECKING:
    from .server import Server

__all__ = ["ENDING", "Deliveries"]

log = logging.getLogger("spoolq")

# The dead-letter reason of a record given back for a connection that ended without a
# goodbye, when that delivery was its last allowed attempt (as the engines' expire says).
_OWNER_DIED = "owner died"
# Deliveries of one queue a connection remembers before it forgets those whose lease ran
# out; then twice what it kept, so that forgetting costs a take no more than O(1) on average.
_SWEEP_AT = 64

# Ops that, once done, end deliveries that connections remember (see Deliveries._ended).
ENDING = SETTLING | {"purge"}

Delivery = tuple[int, str, int | None, float]
"""What a connection remembers of a delivery: (attempts, owner, max_attempts, the lease's
end on its client's clock)."""


class Deliveries:
    """A connection's leased deliveries that nobody has settled yet, as far as the server
    saw, kept in :attr:`delivered` and in the server's map of who holds each record."""

    # Set up by Session.__init__.
    server: Server
    peer: str
    delivered: dict[str, dict[int, Delivery]]
    _sweep_at: dict[str, int]  # queue -> how many deliveries of it start the next sweep
    _queues_at = _SWEEP_AT  # queues remembered that start the next sweep of them all
    # Bytes of replies written so far, those waiting to be written included (under TLS, the
    # most they may take on the wire, as unsent() counts them).
    _written: int
    # The takes whose replies may still be in the server's buffers: (where the reply ends
    # among the bytes written, the take's args, its records).
    _takes_out: deque[tuple[int, dict[str, Any], list[Any]]]

    _corked: list[bytes] | None  # replies gathered before they are written, if any
    _corked_at: int  # _written when they began

    if TYPE_CHECKING:  # Session's
        def unsent(self) -> int: ...

    def _buffered(self) -> int:
        """Bytes of replies written that are still in the server's buffers."""
        return self.unsent() + (
            self._written - self._corked_at if self._corked is not None else 0)

    def _sent_take(self, args: dict[str, Any], records: list[Any]) -> None:
        """Remember the take whose reply carrying ``records`` was just written, until the
        reply has left the server's buffers: a connection cut off before then gives the
        records back (see :meth:`_give_back_unsent`)."""
        out = self._takes_out
        buffered = self._buffered()
        flushed = self._written - buffered
        while out and out[0][0] <= flushed:
            out.popleft()
        if buffered:
            out.append((self._written, args, records))

    def _give_back_unsent(self, unsent: int) -> None:
        """Give back the records of the takes whose replies are among the last ``unsent``
        bytes written, as the connection is cut off: its client never got them. A get's
        records go back to the head of their queue, a lease's without counting the
        attempt."""
        flushed = self._written - unsent
        for end, args, records in self._takes_out:
            if end > flushed:
                if args["lease"] is not None:
                    for ident in records[0::RECORD_FIELDS]:
                        self._forget(args["queue"], ident)
                self._give_back(args, records)
        self._takes_out.clear()

    @staticmethod
    def _client_reset(transport: Any) -> bool:
        """Whether the client reset the connection of ``transport`` unseen (a pending
        socket error): one that dropped, whose leases go back."""
        sock = transport.get_extra_info("socket")
        try:
            return sock is not None and bool(sock.getsockopt(socket.SOL_SOCKET,
                                                             socket.SO_ERROR))
        except (OSError, AttributeError):
            return False

    def _release_leases(self) -> None:
        """Give back the deliveries of this connection that their owners still hold.

        The engine's release skips a delivery that was settled, expired and delivered
        again (its attempts differ) or leased by another owner since: only what this
        connection handed out and nobody settled goes back, counted as an attempt."""
        for queue_name, held in self._unregister().items():
            groups: dict[tuple[str, int | None], list[list[int]]] = {}
            for ident, (attempts, owner, max_attempts, _) in held.items():
                groups.setdefault((owner, max_attempts), []).append([ident, attempts])
            for (owner, max_attempts), deliveries in groups.items():
                args = {"queue": queue_name, "owner": owner, "deliveries": deliveries,
                        "not_before": 0.0, "max_attempts": max_attempts,
                        "count_attempt": True, "reason": _OWNER_DIED}
                self.server.runner.submit("release", args, self._log_release(queue_name))

    def _unregister(self) -> dict[str, dict[int, Delivery]]:
        """Forget every delivery of this connection; return what it held."""
        delivered, self.delivered = self.delivered, {}
        self._sweep_at.clear()
        holders = self.server.holders
        for queue_name, held in delivered.items():
            by_id = holders.get(queue_name)
            if by_id is None:
                continue
            for ident in held:
                if by_id.get(ident) is self:
                    del by_id[ident]
            if not by_id:
                del holders[queue_name]
        return delivered

    def _forget(self, queue_name: str, ident: int) -> None:
        """Forget this connection's delivery of record ``ident``: it is no longer held."""
        held = self.delivered.get(queue_name)
        if held is not None and held.pop(ident, None) is not None and not held:
            del self.delivered[queue_name]
            self._sweep_at.pop(queue_name, None)
        by_id = self.server.holders.get(queue_name)
        if by_id is not None and by_id.get(ident) is self:
            del by_id[ident]
            if not by_id:
                del self.server.holders[queue_name]

    def _delivered(self, args: dict[str, Any], records: list[Any]) -> None:
        """Remember the leased records of a take whose reply was written. A record taken
        again (its lease ran out, or it was released) is no longer held through the
        connection that delivered it before. Deliveries whose lease ran out by this take's
        time are forgotten now and then (see :meth:`_sweep`)."""
        if not records:
            return
        queue_name, lease = args["queue"], args["lease"]
        holders = self.server.holders
        ids = records[0::RECORD_FIELDS]
        if lease is None:
            by_id = holders.get(queue_name)
            if by_id:
                for ident in ids:
                    prev = by_id.get(ident)
                    if prev is not None:
                        prev._forget(queue_name, ident)
            return
        by_id = holders.setdefault(queue_name, {})
        held = self.delivered.setdefault(queue_name, {})
        owner, until, max_attempts = lease[0], float(lease[1]), args["max_attempts"]
        for ident, attempts in zip(ids, records[3::RECORD_FIELDS], strict=True):
            prev = by_id.get(ident)
            if prev is not None and prev is not self:
                prev._forget(queue_name, ident)
            held[ident] = (attempts, owner, max_attempts, until)
            by_id[ident] = self
        if len(held) >= self._sweep_at.get(queue_name, _SWEEP_AT):
            self._sweep(queue_name, held, args["now"])
        if len(self.delivered) >= self._queues_at:
            self._sweep_queues(args["now"])

    def _sweep_queues(self, now: float) -> None:
        """Forget the deliveries whose lease ended by ``now`` in the queues that have too
        few to be swept on their own (see :meth:`_sweep`): leases of many queues, each
        leased from now and then, that ran out and went to the dead letters would else
        stay remembered as long as the connection lives. Runs once the queues remembered
        double, so that it costs a take O(1) on average."""
        for queue_name, held in list(self.delivered.items()):
            if len(held) < _SWEEP_AT:
                self._sweep(queue_name, held, now)
        self._queues_at = max(_SWEEP_AT, 2 * len(self.delivered))

    def _sweep(self, queue_name: str, held: dict[int, Delivery], now: float) -> None:
        """Forget the deliveries of ``queue_name`` whose lease ended by ``now`` (the time
        of a take of this connection: its client's clock, as the leases' ends are).

        A lease that ran out is no longer this connection's to give back: expire() gives
        it back, or sends it to the dead letters, where nobody takes it again (so a take
        would never make the connection forget it)."""
        for ident in [i for i, d in held.items() if d[3] <= now]:
            self._forget(queue_name, ident)
        left = len(self.delivered.get(queue_name, ()))
        if left:
            self._sweep_at[queue_name] = max(_SWEEP_AT, 2 * left)

    def _ended(self, op: str, args: dict[str, Any]) -> None:
        """An op of :data:`ENDING` is done: forget the deliveries it ended."""
        if op == "purge":
            self._purged(args["queue"])
        else:
            self._settled(args)

    def _purged(self, queue_name: str) -> None:
        """Forget every connection's deliveries of ``queue_name``, which a purge just
        emptied: nobody holds them any more. A connection that leases from many queues
        purged in turn would otherwise remember them all for as long as it lives."""
        by_id = self.server.holders.pop(queue_name, None)
        for holder in {*by_id.values()} if by_id else ():
            holder.delivered.pop(queue_name, None)
            holder._sweep_at.pop(queue_name, None)

    def _settled(self, args: dict[str, Any]) -> None:
        """Forget the deliveries an ack or release named, whichever connection delivered
        them: they are settled (or were settled before)."""
        queue_name = args["queue"]
        by_id = self.server.holders.get(queue_name)
        if not by_id:
            return
        owner = args["owner"]
        for ident, attempts in args["deliveries"]:
            holder = by_id.get(ident)
            if holder is None:
                continue
            entry = holder.delivered.get(queue_name, {}).get(ident)
            if entry is not None and entry[0] == attempts and entry[1] == owner:
                holder._forget(queue_name, ident)

    def _log_release(self, queue_name: str, unsent: bool = False
                     ) -> Callable[[Any, BaseException | None], None]:
        def outcome(result: Any, error: BaseException | None) -> None:
            if error is not None:
                log.error("spoolq: giving back the records of %s on %r failed", self.peer,
                          queue_name, exc_info=error)
            elif unsent and result:
                log.info("spoolq: put back %d records taken for %s on %r, whose reply could "
                         "not be sent", result, self.peer, queue_name)
            elif result:
                log.info("spoolq: released %d leases of %s on %r", len(result), self.peer,
                         queue_name)
        return outcome

    def _give_back(self, args: dict[str, Any], records: list[Any]) -> None:
        """Undo a take whose reply can no longer be sent: the records go back in place,
        their attempt not counted (tried again later when the engine fails; see
        :class:`spoolq._givebacks.GiveBacks`)."""
        queue_name = args["queue"]
        self.server.runner.submit(
            "give_back", {"queue": queue_name, "records": records, "lease": args["lease"]},
            self._log_release(queue_name, unsent=True))
