"""TLS of the server: its context, and the handshake of each new connection, which
starts TLS itself so that a failed handshake is logged with the client's address."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from typing import TYPE_CHECKING, cast

from .errors import ConfigurationError
from .protocol import NOT_TLS_REASONS
from .session import Session

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Handshake", "ssl_context"]

log = logging.getLogger("spoolq")


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
                     exc or type(exc).__name__)
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
    ctx.load_cert_chain(tls_cert, tls_key)
    return ctx
