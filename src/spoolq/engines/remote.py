"""The remote engine: queues kept by a spoolq server, reached over TCP.

``spoolq://[:TOKEN@]HOST[:PORT]/NAME[?token=TOKEN&tls=1&ca=CA.pem]`` picks it.
The queue façades encode and compress items on the client, as with any
engine; the server stores the records unread. Each engine call is one request
and one transaction on the server.

The engine is thread-safe: calls share one connection, one at a time.
:meth:`RemoteEngine.wait_ready` (see :mod:`spoolq.engines._remotewait`) uses
connections of its own so a long wait never holds up other calls. A lost
connection fails the call that was running (its outcome is unknown: a put may or
may not have been stored) and the next call connects again; the server releases
the leases the lost connection held.
"""

from __future__ import annotations

import logging
import math
import ssl
import threading
from collections.abc import Sequence
from typing import Any

import cbor2

from ..errors import AuthenticationError, ClosedError, ConfigurationError, EngineError, Unavailable
from ..protocol import (
    HEADER,
    MIN_MAX_REPLY,
    WRITE_OPS,
    FrameTooLarge,
    ProtocolError,
    ReplyTooLarge,
    decode_counts,
    decode_leased,
    decode_records,
    encode_records,
)
from ._checks import check_release, int_deliveries
from ._link import (
    DEFAULT_PORT,
    ConnectionLost,
    Dialing,
    Link,
    RemoteAddress,
    ReplyLate,
    parse_url,
    ssl_context,
    unwire,
    url_queue_name,
    wire,
)
from ._remotedeadline import CallDeadlines, Deadlines
from ._remotesplit import Settling
from ._remotewait import LongPolls, SharedWait, shut
from .base import (
    STORED_RECORDS,
    TAKE_SENT,
    Counts,
    Lease,
    LeasedRecord,
    StoredRecord,
    batch_given,
    check_window,
    never_given,
    nothing_visible,
    refuse_nan,
)

__all__ = ["DEFAULT_PORT", "ConnectionLost", "RemoteAddress", "RemoteEngine", "parse_url",
           "url_queue_name"]

log = logging.getLogger("spoolq")

_MAX_N = 2**31 - 1
_MAY_ABANDON = frozenset({"counts", "owners", "expire"})
"""Calls whose reply may be given up when a caller's deadline cuts them short (see
:meth:`RemoteEngine.call_deadline`): the reads and the expiry a queue's count refresh makes,
which change nothing a dropped reply would leave half done."""
# The longest timeout or connect_timeout, in seconds (some 24 days): past any use, and
# well within what the socket's limits and the deadlines' arithmetic take.
_MAX_TIMEOUT = 2147483.0
# What a record adds to an append request besides its bytes, at most: the CBOR heads of
# the byte string and of its size (9 bytes each).
_PER_RECORD = 18
# What an append request's CBOR heads of its two arrays and its time may take beyond the
# lengths measured with empty arrays (9 bytes each at most, 1 when measured).
_HEAD_SLACK = 3 * 8
_CLOSE_WAIT = 1.0  # seconds close() lets another thread's call finish before cutting it
_WIRE_INT = range(-(2**63), 2**63)  # the integers a request carries


def _sendable(deliveries: Sequence[tuple[int, int]]) -> list[list[int]]:
    """The deliveries of an ack or a release as the request carries them. Those that can
    hold no lease (not two ints, or ints no engine stores) find nothing, as on the local
    engines: they are left out rather than sent for the server to refuse the request."""
    return [[i, a] for i, a in int_deliveries(deliveries) if i in _WIRE_INT and a in _WIRE_INT]


class RemoteEngine(CallDeadlines, LongPolls, Settling):
    """An :class:`~spoolq.Engine` whose storage is a spoolq server.

    ``url`` is ``spoolq://[:TOKEN@]HOST[:PORT][/NAME][?token=...&tls=1&ca=...]``.
    ``token`` (or the URL's) authenticates; a refused token raises
    :class:`AuthenticationError` here. ``tls`` is True (verify the server
    against the system's CAs, or ``ca_file``) or an ``ssl.SSLContext``.
    ``timeout`` bounds each call, ``connect_timeout`` the connection and
    handshake. ``read_only`` refuses every write on this side. ``max_reply``
    caps the size of a reply (None: the server's ``max_frame``, so that every record
    it takes in a put comes back); the server returns fewer records rather than
    exceed it, and an append, ack or release of more records than a reply of
    ``max_reply`` bytes has room for ids (:func:`spoolq.protocol.max_ids`:
    111 at the smallest ``max_reply``) is sent as several requests, each its
    own transaction, and so is an append larger than the server's ``max_frame``
    (when a later request fails, the error's ``stored_records`` attribute says how
    many leading records the requests before it stored; see
    :func:`spoolq.engines.base.stored_before_failure`);
    a record too large for one request raises :class:`FrameTooLarge` before
    anything is sent (:meth:`check_records`). Connection failures raise
    :class:`EngineError`.
    """

    name = "remote"
    cuts_running_calls = True
    """:meth:`close` may be called while another thread's call runs: it cuts that call."""

    def __init__(self, url: str, *, token: str | None = None, read_only: bool = False,
                 timeout: float = 30.0, connect_timeout: float = 10.0,
                 tls: bool | ssl.SSLContext | None = None, ca_file: str | None = None,
                 max_reply: int | None = None) -> None:
        for what, seconds in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                    or not 0 < seconds <= _MAX_TIMEOUT):
                raise ConfigurationError(f"{what} must be a number of seconds > 0 and at most "
                                         f"{_MAX_TIMEOUT:.0f}, not {seconds!r}")
        if max_reply is not None and (type(max_reply) is not int or max_reply < MIN_MAX_REPLY):
            raise ConfigurationError(f"max_reply must be an int of at least {MIN_MAX_REPLY} "
                                     f"bytes, or None, not {max_reply!r}")
        self.address = parse_url(url)
        self.queue_name = self.address.queue
        self.read_only = read_only
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_reply = max_reply
        self._token = token if token is not None else self.address.token
        self._ssl = ssl_context(tls, ca_file or self.address.ca_file, self.address.tls)
        self._lock = threading.Lock()
        self._waiters_lock = threading.Lock()
        self._idle_waiters: list[Link] = []
        self._busy_waiters: set[Link] = set()
        self._dialing_waiters: set[Dialing] = set()
        self._wait_generation = 0
        self._shared_waits: dict[str, SharedWait] = {}
        self._max_attempts: dict[str, int | None] = {}
        self._overheads: dict[str, int] = {}
        self._closed = False
        self._closing = False  # close() began: no call starts any more
        self._long_poll = False  # the running call is a take that waits on the server
        self._deadlines = Deadlines()
        self._dialing: Dialing | None = None  # the connection _call is making, if any
        self._link: Link | None = self._connect()
        self.server_info: dict[str, Any] = dict(self._link.info)
        self._handshake_seconds = self._link.handshake_seconds
        self._forget_in_forked_children()

    def _connect(self, connect_timeout: float | None = None,
                 dialing: Dialing | None = None) -> Link:
        return Link(self.address, token=self._token, ssl_context=self._ssl,
                    connect_timeout=connect_timeout or self.connect_timeout,
                    max_reply=self.max_reply, dialing=dialing)

    def _where(self) -> str:
        return f"the spoolq server at {self.address.host}:{self.address.port}"

    def _call(self, op: str, args: dict[str, Any], wait: float = 0.0) -> Any:
        if self.read_only and op in WRITE_OPS:
            raise EngineError(f"the remote queue was opened read-only; {op} refused")
        full = self.timeout + wait
        left = self._time_left() if self._deadlines.replies else None  # else: connecting only
        if left is None:
            self._lock.acquire()
        elif not self._lock.acquire(timeout=min(left, full)):
            raise Unavailable(f"{self._where()} did not answer another call of this engine "
                              "in time")
        try:
            if self._closed or self._closing:
                raise ClosedError("the remote engine is closed")
            if self._link is not None and self._link.stale():
                self._link.close()
                self._link = None
            if self._link is None:
                self._dialing = dialing = Dialing()  # for close() to cut
                try:
                    self._link = self._connect(self._limit(self.connect_timeout), dialing)
                except ConnectionLost as exc:
                    if self._closing:
                        raise ClosedError("the remote engine was closed while its "
                                          f"{op} call was connecting") from exc
                    raise
                finally:
                    self._dialing = None
                self.server_info = dict(self._link.info)  # a restarted server's, say
                if self._closing:  # close() began as the connection was made: nothing sent
                    raise ClosedError("the remote engine is closed")
            limit = self._limit(full) if self._deadlines.replies else full
            if op == "take" and not self._deadlines.replies:
                self._deadlines.at = None  # the calls after it finish what it began
            # FrameTooLarge here is raised before sending: the connection stays usable
            ident, frame = self._link.proto.request(op, args)
            self._long_poll = wait > 0
            try:
                return self._link.exchange(ident, frame, limit)
            except BaseException as exc:
                if isinstance(exc, ReplyLate) and limit < full and op in _MAY_ABANDON:
                    # Cut short by the caller's deadline on a server that stalls, maybe
                    # only for a moment: closing the connection would give back every
                    # lease delivered on it. The late reply is dropped when it comes.
                    self._link.abandon(ident)
                    raise Unavailable(f"{self._where()} did not answer in time") from None
                # A call that ended before its reply (a timeout, a lost connection, an
                # exception from a signal handler) leaves a reply that would answer no one:
                # the connection goes, and with it whatever the server would send on it.
                if self._link.busy or isinstance(exc, (ConnectionLost, ProtocolError,
                                                       AuthenticationError)):
                    self._link.close()
                    self._link = None
                if self._closing and isinstance(exc, ConnectionLost):
                    raise ClosedError(f"the remote engine was closed during its {op} call, "
                                      "whose outcome is unknown") from exc
                raise
            finally:
                self._long_poll = False
        finally:
            self._lock.release()

    # ---- the engine protocol ------------------------------------------------------------

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        if not batch_given(records, raw_sizes):
            return []
        refuse_nan(self._where(), "append", "now", now)
        records = records if isinstance(records, list) else list(records)
        raw_sizes = raw_sizes if isinstance(raw_sizes, list) else list(raw_sizes)
        ids: list[int] = []
        try:
            while True:
                max_frame = self.server_info["max_frame"]
                try:
                    self._append_from(queue, records, raw_sizes, now, ids)
                    return ids
                except FrameTooLarge:
                    # Refused before it was sent when the connection is new and its server
                    # takes smaller frames (restarted with a lower --max-frame): the records
                    # not stored yet are cut again to the new limit.
                    if self.server_info["max_frame"] >= max_frame:
                        raise
        except Exception as exc:
            if ids:  # the requests before this one are stored: nobody may send them again
                setattr(exc, STORED_RECORDS, len(ids))
            raise

    def _append_from(self, queue: str, records: list[bytes], raw_sizes: list[int],
                     now: float, ids: list[int]) -> None:
        """Append the records after the first ``len(ids)``, adding their ids to ``ids`` as
        each request's reply comes."""
        for part in self._frames(queue, records, len(ids)):
            these = records[part]
            sent = {"queue": queue, "records": these, "sizes": raw_sizes[part],
                    "now": wire(now)}
            try:
                got = self._call("append", sent)
            except ReplyTooLarge as exc:
                before = len(ids)
                got = self._in_parts("append", sent, ("records", "sizes"), exc.fits, ids)
                got = got[before:]
            else:
                if not isinstance(got, list):
                    raise ProtocolError("the server answered an append without its ids")
                ids += got
            if len(got) != len(these):
                raise ProtocolError("the server answered an append with the wrong number of ids")

    def _overhead(self, queue: str) -> int:
        """The most an append request to ``queue`` takes besides its records."""
        overhead = self._overheads.get(queue)
        if overhead is None:
            empty = {"op": "append", "queue": queue, "records": [], "sizes": [], "now": 0.0}
            overhead = self._overheads[queue] = \
                HEADER.size + len(cbor2.dumps(empty)) + _HEAD_SLACK
        return overhead

    def check_records(self, queue: str, records: Sequence[bytes]) -> None:
        """:class:`FrameTooLarge`, stating the limit, for a record larger than one request
        to the server can carry (its ``max_frame``, less the request's own bytes)."""
        if not records:
            return
        largest = max(map(len, records))
        max_frame = self.server_info["max_frame"]
        room = max_frame - self._overhead(queue) - _PER_RECORD
        if largest > room:
            raise FrameTooLarge(
                f"a record of {largest} bytes exceeds the server's limit: the spoolq server "
                f"at {self.address.host}:{self.address.port} takes frames of {max_frame} "
                f"bytes at most, room for a record of {room}; nothing was stored")

    def _frames(self, queue: str, records: list[bytes], first: int = 0) -> list[slice]:
        """The runs of ``records`` from ``first`` on that each fit one append request to the
        server (each sent as its own request and transaction, as the class docstring
        says)."""
        rest = records[first:] if first else records
        self.check_records(queue, rest)
        max_frame = self.server_info["max_frame"]
        base = self._overhead(queue)
        parts: list[slice] = []
        start, size = first, base
        for k, record in enumerate(rest, first):
            cost = len(record) + _PER_RECORD
            if k > start and size + cost > max_frame:
                parts.append(slice(start, k))
                start, size = k, base
            size += cost
        parts.append(slice(start, len(records)))
        return parts

    def take(self, queue: str, n: int, now: float, lease: Lease | None, *,
             wait: float = 0.0) -> list[StoredRecord]:
        """As :meth:`Engine.take`; with ``wait`` the server waits up to that many
        seconds for a record when none is ready (long-poll)."""
        if nothing_visible(self._where(), now, lease) or n < 1:
            return []
        args: dict[str, Any] = {"queue": queue, "n": min(n, _MAX_N), "now": wire(now),
                                "lease": None if lease is None
                                else [lease.owner, wire(lease.until)]}
        if wait > 0:
            args["wait"] = wait
        if lease is not None:
            args["max_attempts"] = self._max_attempts.get(queue)
        try:
            return decode_records(self._call("take", args, wait))
        except ConnectionLost as exc:
            if lease is None and exc.sent:  # a lease comes back when the connection goes
                lost = type(exc)(f"{exc}; the server may have removed the records this take "
                                 "asked for: they are then lost")
                lost.sent = True
                setattr(lost, TAKE_SENT, True)
                raise lost from exc
            raise

    def restore(self, queue: str, records: Sequence[StoredRecord]) -> None:
        if records:
            # The server checks the rest; these ids cannot even travel as a record's id.
            never = next((r.id for r in records if not 0 < r.id < 1 << 63), None)
            if never is not None:
                raise never_given(queue, never)
            for rec in records:
                refuse_nan(self._where(), "restore", f"the enqueue time of record {rec.id}",
                           rec.enqueued_at)
            sent = [r._replace(enqueued_at=wire(r.enqueued_at)) for r in records]
            self._call("restore", {"queue": queue, "records": encode_records(sent)})

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        sent = _sendable(deliveries)
        if not sent:
            return []
        return self._settle("ack", {"queue": queue, "owner": owner, "deliveries": sent})

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str, *,
                not_before: float, max_attempts: int | None, count_attempt: bool = True,
                reason: str = "") -> list[int]:
        reason = check_release(reason, max_attempts)  # as every engine, with nothing to do
        if count_attempt:
            self._max_attempts[queue] = max_attempts
        if not deliveries:
            return []
        refuse_nan(self._where(), "release", "not_before", not_before)
        sent = _sendable(deliveries)
        if not sent:
            return []
        args = {"queue": queue, "owner": owner, "deliveries": sent,
                "not_before": wire(not_before), "max_attempts": max_attempts,
                "count_attempt": count_attempt, "reason": reason}
        return self._settle("release", args)

    def expire(self, queue: str, now: float, *, owners: Sequence[str] = (),
               max_attempts: int | None = None) -> int:
        self._max_attempts[queue] = max_attempts
        if math.isnan(now):
            # No lease ends by time at NaN. The protocol carries no NaN (a request holding
            # one would cost the connection and the leases it holds): the earliest time
            # there is stands for it.
            if not owners:
                return 0
            now = -math.inf
        return self._int(self._call("expire", {"queue": queue, "now": wire(now),
                                               "owners": list(owners),
                                               "max_attempts": max_attempts}))

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        n, offset = check_window(n, offset)
        if n == 0:
            return []
        return decode_records(self._call("peek", {"queue": queue, "n": min(n, _MAX_N),
                                                  "offset": min(offset, _MAX_N)}))

    def peek_leased(self, queue: str, n: int, offset: int = 0) -> list[LeasedRecord]:
        n, offset = check_window(n, offset)
        if n == 0:
            return []
        return [lr._replace(until=unwire(lr.until)) for lr in decode_leased(self._call(
            "peek_leased", {"queue": queue, "n": min(n, _MAX_N), "offset": min(offset, _MAX_N)}))]

    def counts(self, queue: str) -> Counts:
        return decode_counts(self._call("counts", {"queue": queue}))

    def owners(self, queue: str) -> dict[str, int]:
        held = self._call("owners", {"queue": queue})
        if not isinstance(held, dict):
            raise ProtocolError("the server sent owners of an unexpected shape")
        return {str(k): int(v) for k, v in held.items()}

    def move(self, src: str, dst: str, ids: Sequence[int] | None = None) -> int:
        return self._int(self._call("move", {"src": src, "dst": dst,
                                             "ids": None if ids is None else list(ids)}))

    def purge(self, queue: str) -> int:
        return self._int(self._call("purge", {"queue": queue}))

    def queues(self) -> list[str]:
        names = self._call("queues", {})
        if not isinstance(names, list):
            raise ProtocolError("the server sent queue names of an unexpected shape")
        return [str(n) for n in names]

    def get_meta(self, key: str) -> bytes | None:
        value = self._call("get_meta", {"key": key})
        if value is not None and not isinstance(value, bytes):
            raise ProtocolError("the server sent metadata of an unexpected type")
        return value

    def set_meta(self, key: str, value: bytes) -> None:
        self._call("set_meta", {"key": key, "value": bytes(value)})

    def close(self) -> None:
        """Say goodbye (leases stay with their owners) and close every connection.

        A call another thread is running may finish for up to a second (a long-poll
        ``take`` is not waited for); then its connection, or the one it is making, is
        cut: the call raises
        :class:`ClosedError`, its outcome unknown, and the server gives back the leases
        delivered on that connection, as for a lost one. Later calls raise it too."""
        self._closing = True
        if not (self._lock.acquire(blocking=False) if self._long_poll
                else self._lock.acquire(timeout=min(self.timeout, _CLOSE_WAIT))):
            running, dialing = self._link, self._dialing
            if running is not None and running.busy:
                shut(running)
            if dialing is not None:
                dialing.cut()
            self._lock.acquire()
        try:
            if self._closed:
                return
            self._closed = True
            link, self._link = self._link, None
        finally:
            self._lock.release()
        self.cancel_waits()  # at once: not after a goodbye a stalled server may hold up
        if link is not None:
            try:
                link.call("bye", {}, min(self.timeout, 2.0))
            except Exception as exc:  # the server may already be gone; closing goes on
                log.debug("spoolq: goodbye to %s failed: %s", link.where, exc)
            link.close()
        self._close_idle_waiters()

    @staticmethod
    def _ids(value: Any) -> list[int]:
        if not isinstance(value, list) or not all(isinstance(i, int) for i in value):
            raise ProtocolError("the server sent ids of an unexpected shape")
        return value

    @staticmethod
    def _int(value: Any) -> int:
        if not isinstance(value, int):
            raise ProtocolError("the server sent a count of an unexpected type")
        return value

    def __repr__(self) -> str:
        return f"<RemoteEngine {self.address.host}:{self.address.port}>"
