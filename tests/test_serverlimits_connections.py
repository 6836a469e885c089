"""``--max-connections``: past it a new connection gets the server's preamble, an ERROR
frame of code TOO_MANY_CONNECTIONS and the end of the stream, while the connections open
are served on; once one closes, a new one is served. Real sockets on a real server."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import cbor2
import pytest

from spoolq.engines.remote import RemoteEngine
from spoolq.errors import Unavailable
from spoolq.protocol import VERSION, ErrorCode, FrameType, encode_preamble

from .servers import ServerProcess, request_frame


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it ends the stream."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _counts(sock: socket.socket, ident: int) -> object:
    sock.sendall(request_frame(ident, "counts", queue="q"))
    head = b""
    while len(head) < 9:
        head += sock.recv(9 - len(head))
    length, ftype, got = struct.unpack(">IBI", head)
    body = b""
    while len(body) < length - 5:
        body += sock.recv(length - 5 - len(body))
    assert (ftype, got) == (FrameType.REPLY, ident)
    return cbor2.loads(body)


def _served(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(encode_preamble())
    assert sock.recv(8) == encode_preamble()
    assert _counts(sock, 1) == [0, 0, 0, 0]
    return sock


@pytest.fixture(params=["asyncio", "uvloop"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    pytest.importorskip(request.param)
    with ServerProcess(":memory:", "--max-connections", "3", "--loop", request.param) as srv:
        yield srv


def test_a_connection_past_the_limit_is_refused_and_the_others_are_served(
        server: ServerProcess) -> None:
    open_ = [_served(server.port) for _ in range(3)]
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
            # a client sends its preamble and first request at once: it still reads why
            extra.sendall(encode_preamble() + request_frame(1, "counts", queue="q"))
            data = _read_all(extra)
        assert data[:8] == encode_preamble(VERSION)
        length, ftype, ident = struct.unpack_from(">IBI", data, 8)
        assert (ftype, ident) == (FrameType.ERROR, 0)
        error = cbor2.loads(data[17:12 + length])
        assert error["code"] == ErrorCode.TOO_MANY_CONNECTIONS == 6
        assert "3 connections" in error["message"]
        assert len(data) == 12 + length, "nothing but the refusal"
        for k, sock in enumerate(open_):  # the connections open go on being served
            assert _counts(sock, 2 + k) == [0, 0, 0, 0]
        open_.pop().close()
        deadline = time.monotonic() + 5
        while True:  # once the server saw that close, a new connection is served
            try:
                open_.append(_served(server.port))
                break
            except (AssertionError, ConnectionError, OSError):
                assert time.monotonic() < deadline, "no connection was served again"
                time.sleep(0.05)
    finally:
        for sock in open_:
            sock.close()


def test_a_python_client_refused_for_the_limit_raises_unavailable(
        server: ServerProcess) -> None:
    open_ = [_served(server.port) for _ in range(3)]
    try:
        with pytest.raises(Unavailable, match="3 connections"):
            RemoteEngine(f"{server.url}/q", connect_timeout=5).counts("q")
    finally:
        for sock in open_:
            sock.close()


def test_a_bad_limit_is_refused_at_start() -> None:
    with pytest.raises(RuntimeError, match="did not start"):
        ServerProcess(":memory:", "--max-connections", "0")
