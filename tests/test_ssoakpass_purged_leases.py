"""A long-lived connection that leases from many queues, which are then purged, does not
make the server remember those deliveries for as long as the connection lives.

The server runs in a subprocess of its own (``start_server``, real sockets); on SIGUSR1 it
prints how many deliveries its map of holders and its connections remember.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from spoolq.protocol import FrameType, encode_frame, encode_preamble

SRC = str(Path(__file__).resolve().parent.parent / "src")

_SERVER = textwrap.dedent("""
    import asyncio, signal, sys
    from spoolq.server import start_server

    async def main(path):
        server = await start_server(path, port=0)
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def report():
            held = sum(len(q) for c in server.connections for q in c.delivered.values())
            holders = sum(map(len, server.holders.values()))
            print(f"held {held} {holders} {len(server.holders)}", flush=True)

        loop.add_signal_handler(signal.SIGUSR1, report)
        loop.add_signal_handler(signal.SIGTERM, lambda: done.done() or done.set_result(None))
        print(f"port {server.address[1]}", flush=True)
        await done
        server.close()
        await server.wait_closed()

    asyncio.run(main(sys.argv[1]))
""")


@pytest.fixture(params=[":memory:", "sqlite"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    path = ":memory:" if request.param == ":memory:" else str(tmp_path / "q.sqlite")
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, path], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": SRC})
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


def _port(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("port "), line
    return int(line.split()[1])


def _remembered(proc: subprocess.Popen[str]) -> tuple[int, int, int]:
    """(deliveries the connections remember, records in the map of holders, its queues)"""
    assert proc.stdout is not None
    proc.send_signal(signal.SIGUSR1)
    line = proc.stdout.readline()
    assert line.startswith("held "), line
    held, holders, queues = map(int, line.split()[1:])
    return held, holders, queues


class _Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(encode_preamble())
        self.buf = b""
        self._read(8)
        self.ident = 0

    def close(self) -> None:
        self.sock.close()

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(1 << 16)
            assert data, "the server closed the connection"
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def pipeline(self, requests: list[dict[str, Any]]) -> list[Any]:
        frames = []
        for body in requests:
            self.ident += 1
            frames.append(encode_frame(FrameType.REQUEST, self.ident, body))
        self.sock.sendall(b"".join(frames))
        replies = []
        for _ in requests:
            (length,) = struct.unpack(">I", self._read(4))
            frame = self._read(length)
            assert frame[0] == FrameType.REPLY, cbor2.loads(frame[5:])
            replies.append(cbor2.loads(frame[5:]))
        return replies


def test_leases_on_purged_queues_are_forgotten(served: subprocess.Popen[str]) -> None:
    client = _Client(_port(served))
    try:
        _purge_many(served, client)
    finally:
        client.close()


def _purge_many(served: subprocess.Popen[str], client: _Client) -> None:
    names = [f"churn-{i}" for i in range(300)]
    now = time.time()
    for start in range(0, len(names), 50):
        batch = names[start:start + 50]
        client.pipeline([{"op": "append", "queue": q, "records": [b"r" * 20] * 2,
                          "sizes": [20, 20], "now": now} for q in batch])
        taken = client.pipeline([{"op": "take", "queue": q, "n": 1, "now": now,
                                  "lease": ["me", now + 3600]} for q in batch])
        assert all(len(t) == 6 for t in taken)
    assert _remembered(served) == (300, 300, 300)
    purged = client.pipeline([{"op": "purge", "queue": q} for q in names])
    assert purged == [2] * len(names)
    # Nothing of those queues is held any more: the server forgets those deliveries.
    assert _remembered(served) == (0, 0, 0)
    # A lease taken on a queue of that name again is remembered (and forgotten on ack).
    client.pipeline([{"op": "append", "queue": "churn-0", "records": [b"x"], "sizes": [1],
                      "now": now}])
    (taken,) = client.pipeline([{"op": "take", "queue": "churn-0", "n": 1, "now": now,
                                 "lease": ["me", now + 3600]}])
    assert _remembered(served) == (1, 1, 1)
    client.pipeline([{"op": "ack", "queue": "churn-0", "deliveries": [[taken[0], taken[3]]],
                      "owner": "me"}])
    assert _remembered(served) == (0, 0, 0)


def test_a_purge_forgets_the_deliveries_of_other_connections(
        served: subprocess.Popen[str]) -> None:
    port = _port(served)
    clients = [_Client(port) for _ in range(4)]
    try:
        _purge_held_by_others(served, clients[:3], clients[3])
    finally:
        for c in clients:
            c.close()


def _purge_held_by_others(served: subprocess.Popen[str], consumers: list[_Client],
                          admin: _Client) -> None:
    now = time.time()
    admin.pipeline([{"op": "append", "queue": "jobs", "records": [b"j"] * 9, "sizes": [1] * 9,
                     "now": now}])
    for c in consumers:
        assert len(c.pipeline([{"op": "take", "queue": "jobs", "n": 3, "now": now,
                                "lease": ["c", now + 3600]}])[0]) == 18
    assert _remembered(served) == (9, 9, 1)
    assert admin.pipeline([{"op": "purge", "queue": "jobs"}]) == [9]
    assert _remembered(served) == (0, 0, 0)
