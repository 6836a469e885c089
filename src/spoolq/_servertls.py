"""New connections of the server: accepting them on asyncio's own event loop, and TLS:
its context, and the handshake of each new connection, which starts TLS itself so that a
failed handshake is logged with the client's address."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from .errors import ConfigurationError
from .protocol import NOT_TLS_REASONS
from .session import Session

if TYPE_CHECKING:
    from .server import Server
if sys.platform != "win32":
    from fcntl import ioctl
    from termios import FIONREAD

__all__ = ["Acceptor", "Handshake", "ssl_context", "unread"]

log = logging.getLogger("spoolq")
_OUT_OF = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_ACCEPT_PAUSE = 1.0  # seconds without accepting once the process is out of descriptors
_FAILURES_BEFORE_PAUSE = 10  # other accept errors in a row that pause accepting too


def unread(transport: asyncio.BaseTransport | None) -> bool:
    """Whether bytes the client sent wait unread on ``transport``'s socket. A connection
    is judged stalled only when none do: a server held up (its process stopped, its machine
    busy) may run its timers before it reads what came meanwhile, and the silence was then
    its own. Always False on Windows (the stall is then timed from the last read alone)."""
    sock = None if transport is None else transport.get_extra_info("socket")
    if sys.platform == "win32" or sock is None:
        return False
    try:
        return ioctl(sock.fileno(), FIONREAD, bytes(4)) != bytes(4)
    except (OSError, ValueError):  # closed meanwhile
        return False


class Acceptor:
    """Accepts the connections of a server on asyncio's own event loop, in place of the
    loop's accept: out of file descriptors, that logs a traceback and schedules a retry
    for each connection waiting, every second, more each time (thousands of lines a
    second, and a loop that spins on them). Here accepting pauses for a second, with a
    warning when it starts doing so, and goes on with the connections already made.
    uvloop's accept needs none of this (it closes what it cannot take)."""

    def __init__(self, server: Server, factory: Callable[[], asyncio.Protocol],
                 listeners: tuple[socket.socket, ...]) -> None:
        self.server = server
        self.factory = factory
        self.loop = server.loop
        self.short = False  # out of descriptors at the last try
        self.failed = 0  # other accept errors in a row
        self.socks: list[socket.socket] = []
        for listener in listeners:
            # Its own handle of the listening socket (the loop's is closed by the loop).
            sock = socket.fromfd(listener.fileno(), listener.family, listener.type)
            sock.setblocking(False)
            self.loop.remove_reader(listener.fileno())
            self.socks.append(sock)
            self._listen(sock)

    @staticmethod
    def wanted(loop: asyncio.AbstractEventLoop) -> bool:
        return isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)

    def _listen(self, sock: socket.socket) -> None:
        if not self.server.stopping and sock.fileno() != -1:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(100):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF:
                    # A network error of one connection (accept(2) says to retry as for
                    # EAGAIN): the next goes on at once, unless such errors keep coming.
                    log.error("spoolq: accepting a connection failed: %s", exc)
                    self.failed += 1
                    if self.failed < _FAILURES_BEFORE_PAUSE:
                        continue
                elif not self.short:
                    log.warning("spoolq: cannot accept connections for now: %s (trying "
                                "again every %.0f s)", exc, _ACCEPT_PAUSE)
                self.loop.remove_reader(sock.fileno())
                self.short = exc.errno in _OUT_OF
                self.failed = 0
                self.loop.call_later(_ACCEPT_PAUSE, self._listen, sock)
                return
            self.failed = 0
            if self.short:
                self.short = False
                log.warning("spoolq: accepting connections again")
            conn.setblocking(False)
            self.server.spawn(self._connected(conn))

    async def _connected(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError as exc:
            conn.close()
            log.info("spoolq: a connection ended as it was accepted: %s", exc)

    def close(self) -> None:
        for sock in self.socks:
            if sock.fileno() != -1:
                self.loop.remove_reader(sock.fileno())
                sock.close()


class Handshake(asyncio.Protocol):
    """A new connection of a TLS server until its TLS handshake ends; then its
    :class:`Session` takes over. TLS starts here, per connection, rather than in the
    listener, so that a failed handshake is logged with the client's address (the
    listener's TLS closes such a connection without a word, before any protocol of the
    server sees it)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._early = bytearray()  # read before TLS took over (uvloop reads the first bytes)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        transport.pause_reading()  # the handshake reads it, from the start
        peer = transport.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.server.spawn(self._start(transport, where))

    def data_received(self, data: bytes) -> None:
        self._early += data

    def _hand_on(self, transport: asyncio.Transport) -> None:
        """Give the bytes read before TLS took over to TLS (once it has started: start_tls
        schedules that before this runs)."""
        data, self._early = bytes(self._early), bytearray()
        proto = transport.get_protocol()
        if not data or proto is self or transport.is_closing():
            return
        if hasattr(proto, "get_buffer"):  # asyncio's and uvloop's TLS protocols
            view = memoryview(data)
            while view:
                buf = memoryview(proto.get_buffer(len(view)))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                proto.buffer_updated(n)  # type: ignore[attr-defined]
                view = view[n:]
        else:
            cast(asyncio.Protocol, proto).data_received(data)

    async def _start(self, transport: asyncio.Transport, peer: str) -> None:
        server = self.server
        assert server.ssl_context is not None
        session = Session(server)
        session.tcp = transport
        loop = server.loop
        # After the TLS protocol's connection_made, which start_tls schedules once called.
        loop.call_soon(loop.call_soon, self._hand_on, transport)
        try:
            tls = await loop.start_tls(
                transport, session, server.ssl_context, server_side=True,
                ssl_handshake_timeout=server.stall_timeout)
        except ssl.SSLError as exc:
            transport.close()
            if exc.reason in NOT_TLS_REASONS:
                log.warning("spoolq: closing a connection that does not speak TLS, from %s "
                            "(%s): a client without ?tls=1 in its URL?", peer, exc.reason)
            else:
                log.warning("spoolq: a client's TLS handshake failed (%s)%s The client is %s",
                            exc.reason, ": does it trust this server's certificate (its ca=)?"
                            if "ALERT" in str(exc.reason) else ".", peer)
            return
        except (OSError, asyncio.TimeoutError) as exc:  # it went away, or stalled
            transport.close()
            log.info("spoolq: the TLS handshake of %s did not end: %s", peer,
                     str(exc) or type(exc).__name__)
            return
        if tls is None:  # closed meanwhile
            transport.close()
            return
        session.connection_made(tls)


def ssl_context(tls_cert: str | os.PathLike[str] | None,
                 tls_key: str | os.PathLike[str] | None) -> ssl.SSLContext | None:
    if tls_cert is None and tls_key is None:
        return None
    if tls_cert is None:
        raise ConfigurationError("tls_key needs tls_cert")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION  # OpenSSL 3 refuses it anyway; 1.1.1 did not
    ctx.load_cert_chain(tls_cert, tls_key)
    return ctx
