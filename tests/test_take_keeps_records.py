"""Records a take removed reach their caller even when the count read that follows the take
fails (a server lost between the two, after a put whose outcome is unknown or when these
counts lack other handles' puts): a get raising then would lose them, as a get holds no
lease."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

import spoolq
from spoolq.errors import Unavailable

from .servers import ServerProcess

_PREAMBLE = 8  # the client's: magic and version, before its first frame


class DroppingRelay:
    """A TCP relay to a spoolq server that ends the connection, unsent, when a request of an
    op in :attr:`drop` comes from the client: the call fails, its outcome unknown."""

    def __init__(self, port: int) -> None:
        self.drop: set[str] = set()
        self._target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        buf = b""
        sent_preamble = False
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                buf += data
                if not sent_preamble:
                    if len(buf) < _PREAMBLE:
                        continue
                    upstream.sendall(buf[:_PREAMBLE])
                    buf, sent_preamble = buf[_PREAMBLE:], True
                while len(buf) >= 4 and len(buf) >= 4 + struct.unpack_from(">I", buf)[0]:
                    end = 4 + struct.unpack_from(">I", buf)[0]
                    frame, buf = buf[:end], buf[end:]
                    body = cbor2.loads(frame[9:])
                    if isinstance(body, dict) and body.get("op") in self.drop:
                        raise OSError("dropped")
                    upstream.sendall(frame)
        self._close(client, upstream)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        self._close(src, dst)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[ServerProcess, DroppingRelay]]:
    with ServerProcess(str(tmp_path / "q.sqlite")) as server:
        relay = DroppingRelay(server.port)
        try:
            yield server, relay
        finally:
            relay.close()


def test_a_get_after_a_put_whose_outcome_is_unknown_keeps_its_item_when_the_count_read_fails(
        relay: tuple[ServerProcess, DroppingRelay]) -> None:
    server, proxy = relay
    url = f"spoolq://127.0.0.1:{proxy.port}/jobs"
    with spoolq.SyncQueue.create(url, poll_interval=30,
                                 engine_options={"connect_timeout": 2, "timeout": 2}) as q:
        q.put("A")
        proxy.drop = {"append"}
        with pytest.raises(Unavailable):
            q.put("B")  # its outcome unknown: the counts are read again after the next take
        proxy.drop = {"counts"}
        assert q.get_nowait() == "A"  # taken from the server: not lost to the failed read
        proxy.drop = set()
        with pytest.raises(spoolq.Empty):
            q.get_nowait()
        assert q.qsize() == 0
    with spoolq.SyncQueue.create(server.url + "/jobs") as check:
        assert check.qsize() == 0


def test_a_get_whose_counts_lack_another_handles_puts_keeps_its_items_when_the_count_read_fails(
        relay: tuple[ServerProcess, DroppingRelay]) -> None:
    server, proxy = relay
    url = f"spoolq://127.0.0.1:{proxy.port}/jobs"
    with spoolq.SyncQueue.create(url, poll_interval=30,
                                 engine_options={"connect_timeout": 2, "timeout": 2}) as q, \
            spoolq.SyncQueue.create(server.url + "/jobs") as other:
        q.put("small")
        other.put_many(["x" * 1000, "y" * 1000])  # bytes these counts lack
        proxy.drop = {"counts"}
        got = q.get_many(3, block=False)
        assert got == ["small", "x" * 1000, "y" * 1000]
        proxy.drop = set()
    with spoolq.SyncQueue.create(server.url + "/jobs") as check:
        assert check.qsize() == 0
