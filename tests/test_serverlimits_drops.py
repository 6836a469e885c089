"""A connection the server drops (a client that stalls mid-frame, breaks the protocol or
sends a wrong token) gives its ``--max-connections`` slot back at once, with TLS as without,
even when its client never closes its end: a TLS close waits for the client's answer, and
the slot must not wait with it. Real TLS sockets on a real server."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from spoolq.protocol import FrameType, encode_frame, encode_preamble

from .servers import ServerProcess, request_frame
from .test_server import _self_signed

TOKEN = "s3cret-token"


def _read_frame(sock: socket.socket) -> tuple[int, int, object]:
    data = b""
    while len(data) < 9:
        chunk = sock.recv(9 - len(data))
        if not chunk:
            raise ConnectionError("the server ended the stream")
        data += chunk
    length, ftype, ident = struct.unpack(">IBI", data)
    body = b""
    while len(body) < length - 5:
        chunk = sock.recv(length - 5 - len(body))
        if not chunk:
            raise ConnectionError("the server ended the stream")
        body += chunk
    return ftype, ident, cbor2.loads(body)


def _connect(port: int, ctx: ssl.SSLContext | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock if ctx is None else ctx.wrap_socket(sock, server_hostname="127.0.0.1")


def _open(port: int, ctx: ssl.SSLContext | None) -> socket.socket | None:
    """A new connection, served (None: refused for the limit)."""
    sock = _connect(port, ctx)
    sock.sendall(encode_preamble() + encode_frame(FrameType.AUTH, 1, {"token": TOKEN})
                 + request_frame(2, "counts", queue="q"))
    data = b""
    while len(data) < 8:
        data += sock.recv(8 - len(data))
    while True:
        ftype, ident, body = _read_frame(sock)
        if ftype == FrameType.ERROR:
            sock.close()
            assert isinstance(body, dict) and body["code"] == 6, body
            return None
        if ident == 2:
            assert body == [0, 0, 0, 0]
            return sock


def _served(port: int, ctx: ssl.SSLContext | None) -> bool:
    """Whether a new connection is served (False: refused for the limit)."""
    sock = _open(port, ctx)
    if sock is not None:
        sock.close()
    return sock is not None


@pytest.fixture(params=[("asyncio", True), ("uvloop", True), ("asyncio", False)],
                ids=["tls-asyncio", "tls-uvloop", "tcp-asyncio"])
def server(request: pytest.FixtureRequest, tmp_path: Path
           ) -> Iterator[tuple[ServerProcess, ssl.SSLContext | None]]:
    loop, tls = request.param
    pytest.importorskip(loop)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    args = ["--max-connections", "2", "--stall-timeout", "1", "--loop", loop,
            "--token-file", str(token)]
    ctx = None
    if tls:
        cert, key = _self_signed(tmp_path)
        args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        ctx = ssl.create_default_context(cafile=str(cert))
    with ServerProcess(":memory:", *args) as srv:
        yield srv, ctx


_AUTH = encode_preamble() + encode_frame(FrameType.AUTH, 1, {"token": TOKEN})
_MISDEEDS = {
    "stalled mid-frame": _AUTH + b"\x00\x00\x00\x40\x01",
    "bad frame type": _AUTH + struct.pack(">IBI", 6, 99, 2) + b"\x80",
    "wrong token": encode_preamble() + encode_frame(FrameType.AUTH, 1, {"token": "guess"}),
}


@pytest.mark.parametrize("misdeed", list(_MISDEEDS))
def test_a_dropped_connection_frees_its_slot_though_its_client_never_closes(
        server: tuple[ServerProcess, ssl.SSLContext | None], misdeed: str) -> None:
    srv, ctx = server
    held = []
    try:
        for _ in range(2):  # both slots: misbehave, then neither read nor close
            sock = _connect(srv.port, ctx)
            sock.sendall(_MISDEEDS[misdeed])
            held.append(sock)
        start = time.monotonic()
        while not _served(srv.port, ctx):
            # the stall timeout is 1 s; the others are dropped at once
            assert time.monotonic() - start < 5, "the dropped connections kept their slots"
            time.sleep(0.1)
        # and both slots are free: two connections served at once
        first = _open(srv.port, ctx)
        assert first is not None
        with first:
            assert _served(srv.port, ctx)
    finally:
        for sock in held:
            sock.close()
