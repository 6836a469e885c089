"""The server and the remote engine against real server processes on 127.0.0.1: the size
of a reply, connecting within one deadline, and what the server logs of TLS clients."""

from __future__ import annotations

import socket
import struct
import time

import cbor2

from spoolq.engines.remote import RemoteEngine
from spoolq.protocol import FrameType, encode_frame

from .servers import ServerProcess, request_frame


def _frames(sock: socket.socket, count: int) -> list[tuple[int, int, bytes]]:
    """Read ``count`` frames after the server's preamble: (length, id, body)."""
    out: list[tuple[int, int, bytes]] = []
    data = b""
    sock.settimeout(10)
    while len(data) < 8:
        data += sock.recv(65536)
    data = data[8:]
    while len(out) < count:
        while len(data) < 4 or len(data) < 4 + struct.unpack_from(">I", data)[0]:
            got = sock.recv(1 << 20)
            assert got, "the server closed the connection"
            data += got
        length, _, ident = struct.unpack_from(">IBI", data)
        out.append((length, ident, data[9:4 + length]))
        data = data[4 + length:]
    return out


def test_a_reply_never_exceeds_the_servers_max_frame_whatever_the_client_accepts() -> None:
    # A client may announce any max_reply (up to 2**63 - 1): the server built replies up to
    # it, reading that much of the queue into memory, and one past 4 GiB cannot be framed
    # at all (its records were taken and never sent). The server's --max-frame bounds them.
    with ServerProcess(":memory:", "--max-frame", "65536") as server:
        engine = RemoteEngine(f"{server.url}/big")
        try:
            engine.append("big", [b"x" * 8000] * 40, [8000] * 40, time.time())
        finally:
            engine.close()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"SPOOLQ\x00\x02"
                         + encode_frame(FrameType.AUTH, 1, {})
                         + request_frame(2, "hello", max_reply=2**63 - 1)
                         + request_frame(3, "take", queue="big", n=2**31 - 1,
                                         now=time.time()))
            (_, _, _), (_, _, hello), (length, ident, body) = _frames(sock, 3)
            assert cbor2.loads(hello)["max_frame"] == 65536
            assert ident == 3
            records = cbor2.loads(body)
            assert 0 < len(records) // 6 < 40
            assert length <= 65536
