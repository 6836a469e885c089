"""One client connection on the server: handshake, requests, replies, leases.

:class:`Session` is the asyncio protocol of a connection. It feeds received
bytes to :class:`spoolq.protocol.ServerProtocol`, hands requests to the
server's engine thread (or, for an engine that never blocks, runs them at
once), writes the replies, drops clients that stall or break the protocol,
and releases the leases of a connection that ends without saying goodbye.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from ._inflight import LIMITED, request_cost, reserves, too_much
from ._serverlimits import abort_later, refuse_connection, too_many_ids, tune_socket
from ._sessionleases import ENDING, Deliveries, Delivery
from ._sessionwaits import LongPolls
from .dispatch import InlineRunner
from .errors import AuthenticationError, SpoolqError
from .protocol import (
    MIN_MAX_REPLY,
    VERSION,
    ErrorCode,
    ProtocolError,
    Request,
    ServerProtocol,
    code_for,
    encode_error,
    encode_reply,
    record_count,
)

if TYPE_CHECKING:
    from .server import Server

__all__ = ["MAX_INFLIGHT", "Session"]

log = logging.getLogger("spoolq")
_MAX_LENGTH = 2**32 - 1  # the largest frame a frame's length field can tell
MAX_INFLIGHT = 256
"""Requests of one connection in flight before the server stops reading from it."""
_CORK_LIMIT = 256 * 1024  # bytes of ready replies gathered before they are written
# The most a TLS record adds to the at most 16 KiB of replies it carries (header, MAC or tag,
# padding): the bytes of replies under TLS are counted as what they may become on the wire, so
# that encrypted bytes still in the server's buffers never pass for more replies than they hold.
_TLS_RECORD = 16384
_TLS_OVERHEAD = 128


def _version() -> str:
    from . import __version__
    return __version__


class Session(LongPolls, Deliveries, asyncio.Protocol):
    """One client connection: frames in, engine jobs out, replies back.

    It runs on the server's event loop. Requests go to the server's engine
    thread, except with an engine that never blocks (``inline = True``): those
    are answered on the spot, without a callback or an in-flight count.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.sans = ServerProtocol(max_frame=server.max_frame, token=server.token)
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        # Under TLS, the connection that carries it: the encrypted replies its buffers
        # hold are not sent either (see unsent()).
        self.tcp: asyncio.Transport | None = None
        self.peer = "?"
        self._early = bytearray()
        # The leased deliveries this connection sent that nobody has settled yet, as far
        # as the server saw: queue -> {id: (attempts, owner, max_attempts, until)}. A
        # connection that ends without a goodbye gives back exactly these (those still
        # held), never every lease of their owners: a client that reconnects keeps its
        # owner, and the leases it takes on its new connection are not this one's to
        # release. A delivery leaves it when any connection acks or releases it, or takes
        # its record again, or once its lease has run out (see Deliveries._sweep), so a
        # long-lived connection holds not much more than is still out.
        self.delivered: dict[str, dict[int, Delivery]] = {}
        self._sweep_at: dict[str, int] = {}
        self._written = 0
        self._takes_out: deque[tuple[int, dict[str, Any], list[Any]]] = deque()
        self.inflight = 0
        self._reserved = 0  # requests in flight that hold a share of the reply budget
        self._held = 0  # the request_cost of the requests in flight
        self.closed = False
        self.max_reply = min(server.max_frame, _MAX_LENGTH)
        self.max_one = self.max_reply  # a reply of one record, which may be larger
        self._last_data = self._handshake_by = 0.0  # handshake cut off after _handshake_by
        self._stall: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._read_paused = False
        self._corked: list[bytes] | None = None
        self._corked_bytes = 0
        self._corked_at = 0  # self._written when the replies gathered began
        # Requests read but not yet dispatched: a chunk may hold many, and none is started
        # while the client does not read its replies or too many are in flight.
        # Each with its request_cost, worked out once.
        self._backlog: deque[tuple[Request, int]] = deque()
        # Long-polls of this connection sleeping in Server.wait_for: woken when it ends.
        self._sleepers: set[asyncio.Future[bool]] = set()
        self._release_due = False
        # Cut off at shutdown, as its client did not read (or had reset it): leases go back.
        self._abandoned = False
        runner = server.runner
        self._inline = runner if isinstance(runner, InlineRunner) else None

    # ---- transport events ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        tune_socket(self.transport.get_extra_info("socket"))
        peer = self.transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if refuse_connection(self):  # the server is stopping, or has its max_connections
            self.closed = True  # what the client sends is dropped
            return
        self.server.connections.add(self)
        self._last_data = self.loop.time()
        self._handshake_by = self._last_data + self.server.stall_timeout
        self._arm_stall()
        log.info("spoolq: connection from %s", self.peer)
        if self._early:
            early, self._early = bytes(self._early), bytearray()
            self.data_received(early)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.transport is None:  # TLS hands on what follows its handshake before
            self._early += data  # connection_made (see spoolq._servertls)
            return
        self._last_data = self.loop.time()
        try:
            requests = self.sans.receive_data(data)
        except (ProtocolError, AuthenticationError) as exc:
            self._write(self.sans.data_to_send())
            log.warning("spoolq: closing the connection from %s: %s", self.peer, exc)
            self.drop()
            return
        if self.sans.outbox:
            self._write(self.sans.data_to_send())
        if len(requests) == 1 and not self._backlog and not self._write_paused:
            req = requests[0]
            cost = request_cost(req)
            if self._must_wait(req, cost):
                self._backlog.append((req, cost))
                self._run_backlog()
            else:
                self._dispatch(req, cost)
        elif requests:
            self._backlog.extend((req, request_cost(req)) for req in requests)
            self._run_backlog()
        self._arm_stall()

    def _run_backlog(self) -> None:
        """Dispatch waiting requests while the client reads its replies and fewer than
        MAX_INFLIGHT are in flight; the replies that are ready go out together."""
        backlog = self._backlog
        self._cork()
        try:
            while backlog and not self.closed and not self._write_paused \
                    and self.inflight < MAX_INFLIGHT and not self._failing() \
                    and not self._must_wait(*backlog[0]):
                self._dispatch(*backlog.popleft())
                if self._corked_bytes >= _CORK_LIMIT:
                    self._uncork()  # the transport may ask for a pause right here
                    self._cork()
        finally:
            self._uncork()
        self.update_reading()

    def _must_wait(self, req: Request, cost: int) -> bool:
        """Whether ``req``, of :func:`~spoolq._inflight.request_cost` ``cost``, must wait
        for a request in flight to be answered first (see :func:`spoolq._inflight.too_much`)."""
        return too_much(req, cost, self._reserved, self._held, self.max_one)

    def _cork(self) -> None:
        """Gather the replies written from now on, until :meth:`_uncork`."""
        self._corked, self._corked_bytes, self._corked_at = [], 0, self._written

    def _uncork(self) -> None:
        out, self._corked = self._corked, None
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            # counted in _written as they were gathered
            self._put_out(transport, b"".join(out), self._written - self._corked_at)

    def _put_out(self, transport: asyncio.Transport, data: bytes, counted: int) -> None:
        """Write ``data`` (``counted`` bytes of _written). A write failing at once sent none of
        it, nor what waited before it: the records of those takes go back, never taken."""
        before = self.unsent()
        transport.write(data)
        if self._failing():
            self._give_back_unsent(before + counted)

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self._write_paused = True
        self.update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._backlog:
            self._run_backlog()
        else:
            self.update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # its TLS handshake failed (uvloop tells): it was never served
        self.closed = True
        self._backlog.clear()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        self.server.connections.discard(self)
        self.server.connection_closed.set()
        for fut in self._sleepers:
            if not fut.done():
                fut.set_result(False)
        if self.delivered and (self._abandoned or not self.server.stopping):
            # A take still running would lease records after the release and then give
            # them back: the release waits for it, so it finds what the take gave back.
            if self.inflight:
                self._release_due = True
            else:
                self._release_leases()
        else:
            self._unregister()
        log.info("spoolq: connection from %s closed%s", self.peer,
                 f" ({exc})" if exc is not None else "")

    # ---- helpers ------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        size = len(data)
        if self.tcp is not None:
            size += _TLS_OVERHEAD * -(-size // _TLS_RECORD)
        self._written += size
        if self._corked is not None:
            self._corked.append(data)
            self._corked_bytes += len(data)
        elif data and self.transport is not None and not self.transport.is_closing():
            self._put_out(self.transport, data, size)

    def finish(self) -> None:
        """End the connection at shutdown: the replies written go out, then the end of the
        stream; what the client still sends is read and dropped meanwhile, so the close
        does not reset the connection (a reset can destroy replies it has yet to read).
        The client's own close, or :meth:`drop`, ends it."""
        self.closed = True
        self._backlog.clear()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._client_reset(self.tcp or transport):  # unseen, as reading was paused
            self._abandoned = True  # it dropped: its leases go back, as at any other time
            transport.abort()
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    def _failing(self) -> bool:
        """Whether the transport is closing on its own (a write failed, say) before
        ``connection_lost`` (under TLS, its connection): a reply written now would be lost
        unnoticed."""
        return self.transport is None or self.transport.is_closing() or (
            self.tcp is not None and self.tcp.is_closing())

    def drop(self) -> None:
        """Close the connection after sending what is queued (see abort_later)."""
        self.closed = True  # its --max-connections slot is free (see refuse_connection)
        # Once: asyncio's TLS transport, closed twice, lets go of its connection.
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
            abort_later(self)

    def unsent(self) -> int:
        """Bytes of replies written but not yet sent (the client is not reading them);
        under TLS, also the encrypted bytes its connection has yet to send."""
        size = 0
        for transport in (self.transport, self.tcp):
            if transport is not None:
                with contextlib.suppress(AttributeError, RuntimeError):
                    size += transport.get_write_buffer_size()
        return size

    def _surely_unsent(self) -> int:
        """:meth:`unsent`, less what TLS may have added after the replies (the alert that
        closes it): replies end within these last bytes only if some are unsent."""
        unsent = self.unsent()
        return unsent if self.tcp is None else max(0, unsent - _TLS_OVERHEAD)

    def abandon(self, stalled: float | None) -> None:
        """Cut the connection off at shutdown: its client has read nothing for
        ``stalled`` seconds (None: the shutdown's grace period ended). When replies were
        left unsent, the records of the takes among them go back as if never taken, and
        the other leases it delivered go back (the client may never get them), as for a
        connection that dropped; a client that got every reply (a TLS client that does
        not answer the close) keeps them."""
        unsent = self._surely_unsent()
        self.closed = True
        self._abandoned = unsent > 0
        if unsent:  # the records of takes whose replies did not leave go back
            self._give_back_unsent(unsent)
        if self.transport is not None:
            if unsent and stalled is None:
                log.warning("spoolq: dropping the connection from %s: the shutdown's grace "
                            "period ended before its client read its replies (%d bytes "
                            "unsent)", self.peer, unsent)
            elif unsent:
                log.warning("spoolq: dropping the connection from %s: it read none of its "
                            "replies for %.1f s while the server stopped (%d bytes unsent)",
                            self.peer, stalled, unsent)
            else:
                log.info("spoolq: dropping the connection from %s: it got every reply but "
                         "did not close its connection while the server stopped", self.peer)
            self.transport.abort()

    def update_reading(self) -> None:
        """Pause or resume reading: paused while too many requests are in flight, while the
        client does not read its replies, and once the server is stopping."""
        if self.transport is None or self.transport.is_closing():
            return
        pause = (self._write_paused or self.inflight >= MAX_INFLIGHT or self.server.stopping
                 or bool(self._backlog))
        if pause and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()
        elif not pause and self._read_paused and self.inflight <= MAX_INFLIGHT // 2:
            self._read_paused = False
            self._last_data = self.loop.time()
            self.transport.resume_reading()
            self._arm_stall()

    def _arm_stall(self) -> None:
        if self._stall is None and (self.sans.pending or not self.sans.ready):
            self._stall = self.loop.call_later(self.server.stall_timeout, self._check_stall)

    def _check_stall(self) -> None:
        self._stall = None
        if self.closed or self._read_paused or (self.sans.ready and not self.sans.pending):
            return
        now, stall = self.loop.time(), self.server.stall_timeout
        idle = now - self._last_data
        left = stall - idle if self.sans.ready else min(stall - idle, self._handshake_by - now)
        from ._servertls import unread  # (which imports this module)
        if left > 0 or unread(self.tcp or self.transport):  # if so, the server was late
            self._stall = self.loop.call_later(max(left, 0.01), self._check_stall)
            return
        what = "mid-frame" if self.sans.ready else "during the handshake"
        why = (f"no data for {idle:.1f} s {what}" if idle >= stall
               else f"the handshake did not end within {stall:.1f} s")
        log.warning("spoolq: dropping the connection from %s: %s", self.peer, why)
        self._write(encode_error(0, ErrorCode.TIMEOUT, why))
        self.drop()

    # ---- requests -----------------------------------------------------------------------

    def _dispatch(self, req: Request, cost: int) -> None:
        op, args = req.op, req.args
        if op == "hello":
            if args["max_reply"]:
                # Never more than this server's frames: a reply larger than that would
                # read as much of the queue into memory, and one past a frame's length
                # field could not be sent at all. A record larger than that (stored
                # without this server) still goes out alone, within the client's limit.
                self.max_one = min(max(args["max_reply"], MIN_MAX_REPLY), _MAX_LENGTH)
                self.max_reply = min(self.max_one, self.server.max_frame)
            self._write(encode_reply(req.id, {
                "server": f"spoolq {_version()}", "version": self.sans.version or VERSION,
                "engine": self.server.engine.name, "max_frame": self.server.max_frame,
                "time": time.time()}))
            return
        if op == "bye":
            # The leases delivered so far are kept when the connection ends; those taken
            # after the goodbye are this connection's to give back, as without one.
            self._unregister()
            self._write(encode_reply(req.id, None))
            return
        refused = too_many_ids(req, self.max_reply)
        if refused is not None:  # its reply of ids would not fit: refused, not run
            self._write(encode_error(req.id, ErrorCode.BAD_REQUEST, refused))
            return
        if op in LIMITED:
            args["limit"] = self.max_reply
            args["limit_one"] = self.max_one
        if op == "take" and not args["n"]:
            args["wait"] = 0.0  # it can take nothing: no record to wait for
        inline = self._inline
        if inline is not None and op != "wait":
            # The engine never blocks: answer now, without a callback, a task or
            # in-flight accounting. Only a long-polling take that found nothing waits.
            try:
                result = inline.call(op, args)
            except Exception as exc:
                self._write(self._error_frame(req, exc))
                return
            if op != "take" or not args["wait"] or record_count(result):
                if op == "take" and record_count(result):
                    if not self._failing():
                        self._write(encode_reply(req.id, result))
                    self._took(args, result)
                    return
                if op in ENDING:
                    self._ended(op, args)
                self._write(encode_reply(req.id, result))
                return
        self.inflight += 1
        if reserves(req):
            self._reserved += 1
        self._held += cost
        if self.inflight == 1:
            self.server.busy.add(self)
        self.update_reading()
        if op == "wait":
            self.server.spawn(self._wait_ready(req))
        elif op == "take" and args["wait"] > 0:
            self.server.spawn(self._long_take(req))
        else:
            self.server.runner.submit(
                op, args, lambda result, error: self._complete(req, result, error, cost))

    def _complete(self, req: Request, result: Any, error: BaseException | None,
                  cost: int = 0) -> None:
        """Answer ``req`` (of ``cost``, as it was dispatched) with its outcome."""
        self.inflight -= 1
        if reserves(req):
            self._reserved -= 1
        self._held -= cost
        if error is None and req.op in ENDING:
            self._ended(req.op, req.args)
        if self.closed or self._failing():
            if req.op == "take" and error is None and record_count(result):
                self._give_back(req.args, result)
            if self._release_due and not self.inflight:
                self._release_due = False
                self._release_leases()
            self._idle_check()
            return
        self._idle_check()
        if error is None:
            self._write(encode_reply(req.id, result))
            if req.op == "take" and record_count(result):
                self._took(req.args, result)
        else:
            self._write(self._error_frame(req, error))
        if self._backlog and self._corked is None:
            self._run_backlog()
        else:
            self.update_reading()

    def _took(self, args: dict[str, Any], records: list[Any]) -> None:
        """A take's reply was written: delivered, unless that write failed (nothing sent)."""
        if self._failing():
            self._give_back(args, records)
        else:
            self._delivered(args, records)
            self._sent_take(args, records)

    def _idle_check(self) -> None:
        """Leave the server's busy set once nothing of this connection is in flight: a
        shutdown waits for that, so that what a request of a connection that ended still
        gives back reaches the engine before it closes."""
        if not self.inflight:
            self.server.busy.discard(self)
            self.server.connection_closed.set()

    def _error_frame(self, req: Request, error: BaseException) -> bytes:
        """The ERROR frame answering ``req``; unexpected failures are logged."""
        code = code_for(error)
        if code == ErrorCode.INTERNAL:
            log.error("spoolq: %s request from %s failed", req.op, self.peer, exc_info=error)
        elif not isinstance(error, (SpoolqError, ValueError, TypeError)):
            log.warning("spoolq: %s request from %s failed: %s", req.op, self.peer, error)
        return encode_error(req.id, code, f"{type(error).__name__}: {error}"
                            if code == ErrorCode.INTERNAL else str(error))
