"""One connection to a spoolq server (the URL's parts are in :mod:`._remoteurl`).

:class:`Link` does the handshake, then one request at a time with a timeout
for the whole call; :mod:`spoolq.engines.remote` builds the engine on it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import socket
import ssl
import struct
import sys
import threading
import time
from typing import Any

from ..errors import (
    AuthenticationError,
    ConfigurationError,
    EngineError,
    TLSMismatch,
    Unavailable,
)
from ..protocol import (
    DEFAULT_MAX_FRAME,
    MIN_MAX_REPLY,
    NOT_TLS_REASONS,
    ClientProtocol,
    ProtocolError,
    VersionMismatch,
)
from ._remoteurl import DEFAULT_PORT, RemoteAddress, parse_url, url_queue_name

__all__ = ["DEFAULT_PORT", "ConnectionLost", "Dialing", "Link", "RemoteAddress", "TLSMismatch",
           "parse_url", "ssl_context", "unwire", "url_queue_name", "wire"]

log = logging.getLogger("spoolq")

_RECV_SIZE = 65536
_CLOCK_SKEW_WARNING = 2.0
_KERNEL_TIMEOUTS = sys.platform.startswith("linux")
# struct timeval of SO_RCVTIMEO / SO_SNDTIMEO, by its size: two longs, or two 64-bit
# integers where a 32-bit system has a 64-bit time_t.
_TIMEVALS = {struct.calcsize("@ll"): struct.Struct("@ll"), 16: struct.Struct("@qq")}
_FARTHEST = sys.float_info.max
_NEXT_TO_FARTHEST = math.nextafter(_FARTHEST, 0.0)


def wire(t: float) -> float:
    """``t`` as the protocol carries it: finite numbers only, so an infinite time goes as
    the farthest finite one, and a finite time that far as the one next to it: a lease
    until +inf outlives an expiry at every finite time, as on any other engine."""
    if math.isinf(t):
        return math.copysign(_FARTHEST, t)
    return math.copysign(_NEXT_TO_FARTHEST, t) if abs(t) == _FARTHEST else t


def unwire(t: float) -> float:
    """A time the server sent back: the farthest finite one stands for an infinite one."""
    return math.copysign(math.inf, t) if abs(t) == _FARTHEST else t


def ssl_context(tls: bool | ssl.SSLContext | None, ca_file: str | None,
                url_tls: bool) -> ssl.SSLContext | None:
    """The TLS context of the engine's ``tls`` and ``ca_file`` options (``url_tls``: what
    the URL asked for); None without TLS. :class:`ConfigurationError` for a bad CA file."""
    if isinstance(tls, ssl.SSLContext):
        return tls
    if tls or (tls is None and (url_tls or ca_file)):
        try:
            return ssl.create_default_context(cafile=ca_file)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigurationError(
                f"ca_file {ca_file!r} is not a readable PEM file of certificates: {exc}"
            ) from exc
    return None


class ConnectionLost(Unavailable):
    """The connection to the server failed or timed out; the call's outcome is unknown.
    ``sent``: whether the request had gone out whole."""

    sent = False


class ReplyLate(ConnectionLost):
    """The request went out whole and its reply did not come in time."""


_FRESH = 0.001  # seconds since the last reply within which stale() trusts a link
_SLACK = 0.05  # seconds a call may overrun its timeout rather than reset the socket's limit


class Dialing:
    """A connection being made, which another thread may cut: from the moment its socket
    is connected, through TLS and the handshake, :meth:`cut` makes it fail at once with
    :class:`ConnectionLost` (the engine's ``close()`` uses it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handle: socket.socket | None = None  # a duplicate: TLS takes over the socket
        self._cut = False

    @property
    def was_cut(self) -> bool:
        return self._cut

    def watch(self, sock: socket.socket) -> None:
        """Cut ``sock`` too (in place of the socket watched before) on :meth:`cut`."""
        with self._lock:
            if self._cut:
                sock.close()
                raise ConnectionLost("the connection was cut while it was being made")
            if self._handle is not None:
                self._handle.close()
            self._handle = sock.dup()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            if self._handle is not None:
                with contextlib.suppress(OSError):
                    self._handle.shutdown(socket.SHUT_RDWR)

    def done(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


class Link:
    """One connection to the server: handshake, then one request at a time."""

    def __init__(self, address: RemoteAddress, *, token: str | None,
                 ssl_context: ssl.SSLContext | None, connect_timeout: float,
                 max_reply: int | None, dialing: Dialing | None = None) -> None:
        self.where = f"{address.host}:{address.port}"
        started = time.monotonic()
        try:
            self._begin(address, token, ssl_context, connect_timeout, max_reply, dialing)
        finally:
            if dialing is not None:
                dialing.done()
        self.handshake_seconds = self._answered - started  # connecting, TLS and hello

    def _begin(self, address: RemoteAddress, token: str | None,
               ssl_context: ssl.SSLContext | None, connect_timeout: float,
               max_reply: int | None, dialing: Dialing | None) -> None:
        deadline = time.monotonic() + connect_timeout  # for every step: one bound in all
        sock = self._open(address, ssl_context, connect_timeout, dialing)
        self.sock = sock
        # Python's socket timeouts cost a poll() before every send and recv; on Linux the
        # kernel's SO_SNDTIMEO/SO_RCVTIMEO bound a blocking socket at one system call each.
        # TLS sockets keep Python's timeouts, which the ssl module is written for.
        self._timeval: struct.Struct | None = None
        if _KERNEL_TIMEOUTS and ssl_context is None:
            with contextlib.suppress(OSError):
                size = len(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
                self._timeval = _TIMEVALS.get(size)
        if self._timeval is not None:
            sock.settimeout(None)
        self._timeout: float | None = -1.0
        self._buf = bytearray(_RECV_SIZE)
        self._view = memoryview(self._buf)
        # None: replies as large as the server's frames (hello's max_reply 0 says so); the
        # greeting before it is a few dozen bytes
        self.proto = ClientProtocol(max_frame=max_reply or DEFAULT_MAX_FRAME)
        self._early: dict[int, Any] = {}
        self._abandoned: set[int] = set()  # requests whose replies are dropped when they come
        self.busy = False
        try:
            opening, ids = self.proto.start(token)
            hello_id, hello = self.proto.request("hello", {"max_reply": max_reply or 0,
                                                           "client": "spoolq-python"})
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReplyLate(f"the spoolq server at {self.where} did not answer the "
                                "connection in time")
            self._send(opening + hello, left)
            try:
                for ident in ids:
                    self._receive(ident, deadline)
                info = self._receive(hello_id, deadline)
            except ConnectionLost as exc:
                if (ssl_context is not None or self.proto.version is not None
                        or isinstance(exc, ReplyLate)
                        or (dialing is not None and dialing.was_cut)
                        or not self._speaks_tls(address, deadline, dialing)):
                    raise
                raise TLSMismatch(
                    f"the server at {self.where} closed the connection without the spoolq "
                    "greeting, and it answers TLS: is it a TLS server (started with "
                    "--tls-cert)? Add ?tls=1 to the URL (and ?ca=CA.pem for a certificate "
                    "not from a CA this system trusts)") from exc
        except AuthenticationError as exc:
            self.close()
            said = str(exc)
            named = said.replace("the server", f"the spoolq server at {self.where}", 1)
            raise AuthenticationError(named if named != said
                                      else f"the spoolq server at {self.where}: {said}") from exc
        except BaseException:
            self.close()
            raise
        self._greeted(info, max_reply)

    def _greeted(self, info: Any, max_reply: int | None) -> None:
        """Take the server's greeting (the reply to ``hello``)."""
        server_time: Any = info.get("time", time.time()) if isinstance(info, dict) else None
        if (not isinstance(info, dict) or type(info.get("max_frame")) is not int
                or type(server_time) not in (int, float) or not math.isfinite(server_time)):
            self.close()
            raise ProtocolError(f"the server at {self.where} sent an unexpected greeting")
        self.info = info
        self._poll = select.poll()
        self._poll.register(self.sock, select.POLLIN)
        self._answered = time.monotonic()
        if max_reply is None:
            self.proto.decoder.max_frame = max(info["max_frame"], MIN_MAX_REPLY)
        self.proto.server_max_frame = info["max_frame"]
        self._check_clock(float(server_time))

    def _open(self, address: RemoteAddress, ssl_context: ssl.SSLContext | None,
              connect_timeout: float, dialing: Dialing | None) -> socket.socket:
        """A connected socket, with TLS when ``ssl_context`` is given."""
        began = time.monotonic()
        try:
            sock = socket.create_connection((address.host, address.port), connect_timeout)
        except OSError as exc:
            raise Unavailable(f"cannot connect to the spoolq server at {self.where}: {exc}") \
                from exc
        try:
            if dialing is not None:
                dialing.watch(sock)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                # what connecting left of connect_timeout, for the whole TLS handshake
                sock.settimeout(max(connect_timeout - (time.monotonic() - began), 0.001))
                sock = ssl_context.wrap_socket(sock, server_hostname=address.host)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, (TimeoutError, ConnectionError, ssl.SSLEOFError)):
                # a server that stalled or went away during the handshake, as without TLS
                raise ConnectionLost(f"TLS with the spoolq server at {self.where} failed: "
                                     f"{exc}") from exc
            if isinstance(exc, ssl.SSLCertVerificationError):
                raise TLSMismatch(
                    f"TLS with the spoolq server at {self.where} failed: its certificate "
                    f"failed verification ({exc.verify_message}): give the certificate of "
                    "the CA that signed it (or the self-signed certificate itself) as "
                    "ca_file, ?ca=CA.pem in the URL; the certificate must name the URL's "
                    "host too") from exc
            if isinstance(exc, ssl.SSLError) and exc.reason in NOT_TLS_REASONS:
                raise TLSMismatch(
                    f"the server at {self.where} did not answer with TLS ({exc.reason}): is "
                    "it running without --tls-cert? Connect without tls=1 and ca=, or give "
                    "the server a certificate") from exc
            if isinstance(exc, OSError):
                raise EngineError(f"TLS with the spoolq server at {self.where} failed: {exc}") \
                    from exc
            raise
        return sock

    def _speaks_tls(self, address: RemoteAddress, deadline: float,
                    dialing: Dialing | None) -> bool:
        """Whether the server answers a TLS handshake (on a connection of its own): asked
        when it closed a connection without TLS before its greeting, which is what a TLS
        server does with a client that does not speak TLS."""
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        probe.check_hostname = False
        probe.verify_mode = ssl.CERT_NONE  # whom it is does not matter: whether it is TLS
        try:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with socket.create_connection((address.host, address.port), left) as sock:
                if dialing is not None:
                    dialing.watch(sock)
                with probe.wrap_socket(sock, server_hostname=address.host):
                    return True
        except ssl.SSLError as exc:  # a TLS alert: a TLS server refused this handshake
            return "ALERT" in str(exc.reason)
        except OSError:
            return False

    def _check_clock(self, server_time: float) -> None:
        skew = server_time - time.time()
        if abs(skew) > _CLOCK_SKEW_WARNING:
            log.warning("spoolq: the clock of the server at %s differs from ours by %.1f s; "
                        "lease times assume synchronized clocks", self.where, skew)

    def _set_timeout(self, timeout: float | None) -> None:
        if self._timeval is not None:
            # at least 1 us: a zero timeval means no limit at all
            micros = 0 if timeout is None else max(round(timeout * 1e6), 1)
            limit = self._timeval.pack(micros // 1_000_000, micros % 1_000_000)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        else:
            self.sock.settimeout(timeout)
        self._timeout = timeout

    def _timeout_or_inf(self) -> float:
        return float("inf") if self._timeout is None else self._timeout

    def _sendall(self, data: bytes, timeout: float | None) -> None:
        """Send all of ``data`` within ``timeout`` seconds in all (the kernel's limit holds
        for one ``send``; a slow reader must not stretch a large frame without end)."""
        sent = self.sock.send(data)
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while view:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("send timed out")
                    self._set_timeout(left)
                view = view[self.sock.send(view):]
        finally:
            if self._timeout != timeout:
                self._set_timeout(timeout)

    def _send(self, data: bytes, timeout: float | None) -> None:
        try:
            if timeout != self._timeout:
                self._set_timeout(timeout)
            if self._timeval is not None:
                self._sendall(data, timeout)
            else:
                self.sock.sendall(data)
        except (TimeoutError, BlockingIOError) as exc:
            raise ConnectionLost(f"the spoolq server at {self.where} took no request in time") \
                from exc
        except OSError as exc:
            raise ConnectionLost(f"lost the connection to the spoolq server at {self.where}: "
                          f"{exc}") from exc

    def _receive(self, ident: int, deadline: float | None) -> Any:
        """The reply to ``ident`` (its error raised) by ``deadline`` (``time.monotonic()``)
        in all: the socket's limit holds for one read, and a server that trickles its
        reply must not stretch the call without end. The first read keeps the limit the
        call set unless sending used more than ``_SLACK`` of it (a system call saved)."""
        first = True
        while ident not in self._early:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ReplyLate(f"no reply from the spoolq server at {self.where} in time")
                if not first or left < self._timeout_or_inf() - _SLACK:
                    self._set_timeout(left)
            first = False
            try:
                got = self.sock.recv_into(self._buf)
            except (TimeoutError, BlockingIOError) as exc:  # Python's timeout, the kernel's
                raise ReplyLate(f"no reply from the spoolq server at {self.where} in time") \
                    from exc
            except OSError as exc:
                raise ConnectionLost(f"lost the connection to the spoolq server at {self.where}: "
                              f"{exc}") from exc
            if not got:
                raise ConnectionLost(f"the spoolq server at {self.where} closed the connection")
            try:
                replies = self.proto.receive_data(self._view[:got])
            except VersionMismatch as exc:  # a setting to fix: no outage to wait out
                raise VersionMismatch(f"the spoolq server at {self.where}: {exc}") from exc
            except ProtocolError as exc:
                raise ConnectionLost(f"the spoolq server at {self.where} broke the protocol: "
                              f"{exc}") from exc
            for reply in replies:
                if reply.id == 0 and isinstance(reply.error, VersionMismatch):
                    raise VersionMismatch(f"the spoolq server at {self.where} refused protocol "
                                          f"version {self.proto.version}, which this client "
                                          f"speaks: {reply.error}") from reply.error
                if reply.id == 0 and reply.error is not None:
                    raise reply.error  # about the whole connection: it is being closed
                if reply.id in self._abandoned:
                    self._abandoned.discard(reply.id)
                    continue
                self._early[reply.id] = reply
        reply = self._early.pop(ident)
        self.busy = False
        if reply.error is not None:
            raise reply.error
        return reply.value

    def call(self, op: str, args: dict[str, Any], timeout: float | None) -> Any:
        ident, frame = self.proto.request(op, args)
        return self.exchange(ident, frame, timeout)

    def exchange(self, ident: int, frame: bytes, timeout: float | None) -> Any:
        """Send a request frame and wait for its reply (raising the error the server
        sent). Until the reply is in, :attr:`busy` is True: a call that ends otherwise
        (a timeout, an exception raised by a signal handler) leaves the connection in
        an unknown state, to be closed."""
        self.busy = True
        deadline = None if timeout is None else time.monotonic() + timeout
        self._send(frame, timeout)
        try:
            reply = self._receive(ident, deadline)
        except ConnectionLost as exc:
            exc.sent = True  # whole: the server may have run it
            raise
        self._answered = time.monotonic()
        return reply

    def abandon(self, ident: int) -> None:
        """Stop waiting for the reply to ``ident``, whose request went out whole (after
        :class:`ReplyLate`): it is dropped when it comes, and the connection serves the
        calls after it, the leases delivered on it kept."""
        self._abandoned.add(ident)
        self.busy = False

    def stale(self) -> bool:
        """Whether this idle connection has something to read: the server closed it (after
        a restart, say) or sent what nobody asked for. Either way it is of no more use.
        A connection answered within the last millisecond is taken as sound unasked: a
        call right after another then costs no system call. Late replies of abandoned
        calls are read and dropped here, and what follows them looked at."""
        if not self._abandoned and time.monotonic() - self._answered < _FRESH:
            return False
        try:
            if not (self._poll.poll(0) or (isinstance(self.sock, ssl.SSLSocket)
                                           and self.sock.pending() > 0)):
                return False
        except (OSError, ValueError):
            return True
        return not self._abandoned or not self._drop_late_replies()

    def _drop_late_replies(self) -> bool:
        """Read what the poll found while calls were abandoned: their late replies are
        dropped. False when the connection is of no more use (closed, failed, or it sent
        what nobody asked for)."""
        try:
            self._set_timeout(0.001)  # something is there to read: no wait
            got = self.sock.recv_into(self._buf)
            if not got:
                return False
            replies = self.proto.receive_data(self._view[:got])
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            return True  # part of a TLS record: the call reads the rest
        except (OSError, ProtocolError):
            return False
        for reply in replies:
            if reply.id not in self._abandoned:
                return False
            self._abandoned.discard(reply.id)
        if self._abandoned:
            return True  # more late replies to come: the next call reads them
        return not self.stale()  # what came after them: the end of the stream, say

    def close(self) -> None:
        self.sock.close()
