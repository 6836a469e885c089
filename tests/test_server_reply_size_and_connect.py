"""The server and the remote engine against real server processes on 127.0.0.1: the size
of a reply, connecting within one deadline, and what the server logs of TLS clients."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import cbor2
import pytest

import spoolq
from spoolq.engines.remote import RemoteEngine
from spoolq.protocol import FrameType, encode_frame, encode_preamble

from .servers import ServerProcess, request_frame, wait_until
from .test_server import _needs, _self_signed


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


def test_a_record_larger_than_the_servers_max_frame_still_goes_out_alone(
        tmp_path: Path) -> None:
    # A record stored without this server (put on the file itself, or through a server
    # with a larger --max-frame) fits no reply of its frames: it goes out alone, within
    # the client's own max_reply, rather than stay at the head and fail every take.
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path, compressor="none") as q:
        q.put_many([b"x" * 10_000, b"small", b"y" * 10_000])
    with ServerProcess(path, "--max-frame", "4096") as server:
        with spoolq.SyncQueue.create(server.url, compressor="none",
                                     engine_options={"max_reply": 1 << 20}) as remote:
            assert remote.peek(3) == [b"x" * 10_000]  # fewer records, as the reply allows
            assert remote.get(timeout=5) == b"x" * 10_000
            assert remote.get(timeout=5) == b"small"
            message = remote.lease()
            assert message.item == b"y" * 10_000
            remote.ack(message)
        with spoolq.SyncQueue.create(server.url, engine_options={"max_reply": 8192}) as small:
            small.put(b"z")
            assert small.get(timeout=5) == b"z"


class _SlowRelay:
    """A TCP relay on 127.0.0.1 to ``port`` that hands on what the server sends ``delay``
    seconds after it came (a slow network), and what the client sends at once."""

    def __init__(self, port: int, delay: float) -> None:
        self.delay = delay
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._socks: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target))
                self._socks += [client, server]
                threading.Thread(target=self._pump, args=(client, server, 0.0),
                                 daemon=True).start()
                threading.Thread(target=self._pump, args=(server, client, self.delay),
                                 daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                came = time.monotonic()
                time.sleep(max(came + delay - time.monotonic(), 0.0))
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for sock in self._socks:
            sock.close()


def test_connecting_over_tls_takes_connect_timeout_in_all(tmp_path: Path) -> None:
    # Each step had a connect_timeout of its own (the TLS handshake, then the spoolq
    # greeting): over a slow network connecting took up to twice the time given.
    cert, key = _self_signed(tmp_path)
    with ServerProcess(":memory:", "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        relay = _SlowRelay(server.port, 0.9)  # each step in time, not both together
        try:
            start = time.monotonic()
            with pytest.raises(spoolq.Unavailable):
                RemoteEngine(f"spoolq://127.0.0.1:{relay.port}/jobs", ca_file=str(cert),
                             connect_timeout=1.0).close()
            assert time.monotonic() - start < 1.7
        finally:
            relay.close()


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_replies_of_one_record_beyond_max_frame_stay_within_the_reply_budget(
        tmp_path: Path) -> None:
    # A reply of one record larger than --max-frame may be as large as the client's
    # max_reply: the reads a connection has in flight are budgeted at that size, or 40
    # pipelined peeks of a 6 MiB record ran at once, the server holding 40 such replies.
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path, serializer="raw", compressor="none") as q:
        q.put(os.urandom(6 << 20))
    with ServerProcess(path, "--max-frame", str(1 << 20)) as server:
        before = _peak_rss_mb(server.proc.pid)
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"SPOOLQ\x00\x02" + encode_frame(FrameType.AUTH, 1, {})
                         + request_frame(2, "hello", max_reply=16 << 20)
                         + b"".join(request_frame(3 + k, "peek", queue="default", n=1)
                                    for k in range(40)))
            time.sleep(1.5)  # replies unread: the server holds what it built
            grown = _peak_rss_mb(server.proc.pid) - before
            frames = _frames(sock, 42)
        assert all(len(body) > 6 << 20 for _, _, body in frames[2:])
        assert grown < 120, f"the server grew {grown:.0f} MiB"


def _logged(log: Path, text: str) -> None:
    wait_until(lambda: text in log.read_text(errors="replace"), within=5)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_servers_tls_warnings_name_the_clients_address(tmp_path: Path, loop: str) -> None:
    """An operator reading the log learns which client to fix: its address and port."""
    _needs(loop)
    cert, key = _self_signed(tmp_path)
    log = tmp_path / "server.log"
    with ServerProcess(":memory:", "--tls-cert", str(cert), "--tls-key", str(key),
                       "--loop", loop, log_file=log) as server:
        with socket.create_connection(("127.0.0.1", server.port), 5) as plain:
            where = f"127.0.0.1:{plain.getsockname()[1]}"
            plain.sendall(encode_preamble())
            plain.settimeout(5)
            with contextlib.suppress(OSError):
                while plain.recv(4096):
                    pass
        _logged(log, f"closing a connection that does not speak TLS, from {where} (")
        (tmp_path / "other").mkdir()
        other, _ = _self_signed(tmp_path / "other")  # a certificate that did not sign it
        untrusting = ssl.create_default_context(cafile=str(other))
        with socket.create_connection(("127.0.0.1", server.port), 5) as sock:
            where = f"127.0.0.1:{sock.getsockname()[1]}"
            with pytest.raises(ssl.SSLCertVerificationError):
                untrusting.wrap_socket(sock, server_hostname="127.0.0.1")
        _logged(log, "a client's TLS handshake failed (TLSV1_ALERT_UNKNOWN_CA): does it "
                           f"trust this server's certificate (its ca=)? The client is {where}")
        assert server.proc.poll() is None
