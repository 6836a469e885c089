"""A TLS server's shutdown with replies still in its buffers: a client that does not read
them has the records of its takes given back (as over plain TCP), a client that keeps
reading gets them whole, and a client that got its reply keeps what it took."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from spoolq.engines import open_engine
from spoolq.protocol import PREAMBLE, encode_preamble
from tests.servers import ServerProcess, reply_frames, request_frame
from tests.test_server import _needs, _self_signed

LOOPS = ["asyncio", "uvloop"]
BIG = 1 << 20


def _file_with_big_records(path: Path, count: int) -> None:
    eng = open_engine(str(path))
    try:
        big = [b"%02d" % k + b"b" * BIG for k in range(count)]
        eng.append("q", big, [len(b) for b in big], 1.0)
        eng.append("q", [b"after"], [5], 1.0)
    finally:
        eng.close()


def _tls_server(tmp_path: Path, path: Path, loop: str) -> ServerProcess:
    _needs(loop)
    cert, key = _self_signed(tmp_path)
    return ServerProcess(str(path), "--tls-cert", str(cert), "--tls-key", str(key),
                         "--loop", loop, log_file=tmp_path / "server.log")


def _tls_connect(tmp_path: Path, port: int, rcvbuf: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _left(path: Path) -> list[tuple[bytes, int]]:
    check = open_engine(str(path))
    try:
        return [(r.data[:2], r.attempts) for r in check.peek("q", 20)]
    finally:
        check.close()


@pytest.mark.parametrize("leased", [False, True], ids=["get", "lease"])
@pytest.mark.parametrize("loop", LOOPS)
def test_a_take_whose_tls_reply_was_not_read_by_the_shutdown_gives_its_records_back(
        tmp_path: Path, loop: str, leased: bool) -> None:
    # The server counted only what its TLS layer held, never the encrypted bytes waiting
    # in the connection below it: it saw nothing unsent, so a get's records were lost and
    # a lease's stayed leased, to come back later with an attempt nobody received.
    path = tmp_path / "q.sqlite"
    _file_with_big_records(path, 12)
    server = _tls_server(tmp_path, path, loop)
    sock = _tls_connect(tmp_path, server.port, 4096)
    try:
        now = time.time()
        sock.sendall(encode_preamble() + request_frame(
            1, "take", queue="q", n=12, now=now,
            lease=["w", now + 600] if leased else None, max_attempts=None))
        time.sleep(1.0)  # taken, its reply waiting in the server's buffers
        assert server.stop() == 0
    finally:
        sock.close()
        server.stop()
    assert _left(path) == [(b"%02d" % k, 0) for k in range(12)] + [(b"af", 0)]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_tls_client_that_keeps_reading_at_shutdown_gets_its_whole_reply(
        tmp_path: Path, loop: str) -> None:
    # Its reads made no progress the server could see: it was cut off a second into the
    # shutdown, mid-reply, and the records of its get were lost.
    path = tmp_path / "q.sqlite"
    _file_with_big_records(path, 8)
    server = _tls_server(tmp_path, path, loop)
    sock = _tls_connect(tmp_path, server.port, 65536)
    got = bytearray()

    def read_slowly() -> None:
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                got.extend(chunk)
                time.sleep(0.01)  # some 3 MB/s: 8 MiB take longer than a second

    reader = threading.Thread(target=read_slowly)
    try:
        sock.sendall(encode_preamble() + request_frame(
            1, "take", queue="q", n=8, now=time.time(), lease=None, max_attempts=None))
        reader.start()
        time.sleep(0.3)
        assert server.stop() == 0
        reader.join(20)
    finally:
        sock.close()
        server.stop()
    frames = reply_frames(bytes(got[PREAMBLE.size:]))
    assert len(frames) == 1, "the reply did not arrive whole"
    records = frames[0][2]
    assert [records[k][:2] for k in range(1, len(records), 6)] == [b"%02d" % k for k in range(8)]
    assert _left(path) == [(b"af", 0)]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_tls_client_that_read_its_reply_keeps_what_it_took_at_shutdown(
        tmp_path: Path, loop: str) -> None:
    """A client that read its whole reply, then neither reads nor closes: the records it got
    do not go back (they would be delivered twice)."""
    path = tmp_path / "q.sqlite"
    _file_with_big_records(path, 3)
    server = _tls_server(tmp_path, path, loop)
    sock = _tls_connect(tmp_path, server.port, 4096)
    try:
        now = time.time()
        sock.sendall(encode_preamble() + request_frame(
            1, "take", queue="q", n=3, now=now, lease=None, max_attempts=None)
            + request_frame(2, "take", queue="q", n=1, now=now, lease=["w", now + 600],
                            max_attempts=None))
        got = bytearray()
        while len(reply_frames(bytes(got[PREAMBLE.size:]))) < 2:
            got += sock.recv(65536)
        assert server.stop() == 0
    finally:
        sock.close()
        server.stop()
    assert _left(path) == []  # the get's records gone, the lease still out
    check = open_engine(str(path))
    try:
        assert tuple(check.counts("q"))[:2] == (0, 1)
    finally:
        check.close()
