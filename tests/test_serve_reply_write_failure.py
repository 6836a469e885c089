"""A take whose reply the server could not write at all, as the client reset its
connection before the reply went out: its records go back as if never taken (over TLS
too)."""

from __future__ import annotations

import socket
import ssl
import struct
import time
import uuid
from collections.abc import Iterator

import pytest

from spoolq.engines.remote import RemoteEngine
from spoolq.protocol import encode_preamble

from .servers import ServerProcess, request_frame, wait_until


class _Served:
    def __init__(self, proc: ServerProcess, ca: str | None) -> None:
        self.proc, self.ca = proc, ca


@pytest.fixture(scope="module", params=[("uvloop", False), ("asyncio", False),
                                        ("uvloop", True), ("asyncio", True)],
                ids=lambda p: f"{p[0]}{'-tls' if p[1] else ''}")
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Served]:
    loop, tls = request.param
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    args: list[str] = ["--loop", loop]
    ca = None
    if tls:
        from .test_server import _self_signed
        cert, key = _self_signed(tmp_path_factory.mktemp("tls"))
        args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        ca = str(cert)
    with ServerProcess(":memory:", *args) as proc:
        yield _Served(proc, ca)


def _reset_after(srv: _Served, frames: bytes) -> None:
    """Send ``frames`` on a connection of its own while the server is stopped, and reset
    the connection before the server runs them: every reply it writes then fails."""
    host, port = srv.proc.url.removeprefix("spoolq://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    try:
        if srv.ca is not None:
            sock = ssl.create_default_context(cafile=srv.ca).wrap_socket(
                sock, server_hostname=host)
        sock.sendall(encode_preamble())
        got = b""
        while len(got) < 8:
            chunk = sock.recv(8 - len(got))
            assert chunk, "the server closed the connection"
            got += chunk
        with srv.proc.stalled():
            sock.sendall(frames)
            time.sleep(0.2)  # in the server's socket, unread
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, before the server reads the requests
    finally:
        sock.close()


@pytest.mark.parametrize("leased", [False, True])
@pytest.mark.parametrize("pipelined", [1, 40])
def test_a_take_whose_reply_could_not_be_written_gives_its_records_back_uncounted(
        server: _Served, leased: bool, pipelined: int) -> None:
    name = f"q-{uuid.uuid4().hex[:8]}"
    client = RemoteEngine(server.proc.url, ca_file=server.ca)
    try:
        client.append(name, [b"x%d" % i for i in range(2 * pipelined + 1)],
                      [2] * (2 * pipelined + 1), time.time())
        now = time.time()
        lease = ["them", now + 600] if leased else None
        _reset_after(server, b"".join(
            request_frame(i, "take", queue=name, n=2, now=now, lease=lease)
            for i in range(1, pipelined + 1)))
        wait_until(lambda: tuple(client.counts(name))[:2] == (2 * pipelined + 1, 0),
                   within=10)
        records = client.peek(name, 1000)
        assert [r.attempts for r in records] == [0] * len(records), \
            "a delivery its client never got was counted as an attempt"
        assert [r.id for r in records] == sorted(r.id for r in records)
    finally:
        client.close()
