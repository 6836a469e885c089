"""A client that resets its connection while the server shuts down (waiting for a slow
request of another client) neither stops the shutdown nor keeps its leases: the server
exits, and that connection's leases go back as for any client that dropped."""

from __future__ import annotations

import socket
import sqlite3
import struct
import threading
import time
from pathlib import Path

import pytest

from spoolq.engines import open_engine
from spoolq.engines.remote import RemoteEngine
from spoolq.protocol import encode_preamble

from .servers import ServerProcess, reply_frames, request_frame


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_reset_during_the_shutdown_does_not_hang_it_and_its_leases_go_back(
        tmp_path: Path, loop: str) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    path = str(tmp_path / "q.sqlite")
    srv = ServerProcess(path, "--loop", loop)
    other = RemoteEngine(srv.url, timeout=30)
    holder: sqlite3.Connection | None = None
    writer: threading.Thread | None = None
    try:
        other.append("jobs", [b"a", b"b"], [1, 1], time.time())
        host, port = srv.url.removeprefix("spoolq://").rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=10)
        try:
            now = time.time()
            sock.sendall(encode_preamble() + request_frame(
                1, "take", queue="jobs", n=2, now=now, lease=["A", now + 600]))
            data = b""
            while not reply_frames(data[8:]):
                chunk = sock.recv(65536)
                assert chunk, "the server closed the connection"
                data += chunk
            assert len(reply_frames(data[8:])[0][2]) == 12  # two records leased
            # Another client's write waits for a lock this process holds: the shutdown
            # waits for it, its reading of every connection paused.
            holder = sqlite3.connect(path, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            stored: list[list[int]] = []
            writer = threading.Thread(target=lambda: stored.append(
                other.append("other", [b"z"], [1], time.time())))
            writer.start()
            time.sleep(0.5)
            srv.proc.send_signal(15)
            time.sleep(0.5)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            sock.close()  # a reset, unseen by the stopping server until it ends the stream
        time.sleep(0.3)
        holder.execute("ROLLBACK")
        writer.join(20)
        assert stored == [[1]], "the write the shutdown waited for was answered"
        assert srv.proc.wait(20) == 0
    finally:
        if holder is not None:
            holder.close()
        other.close()
        srv.stop(9)
    engine = open_engine(path)
    try:
        assert tuple(engine.counts("jobs"))[:2] == (2, 0)
        assert [r.attempts for r in engine.peek("jobs", 10)] == [1, 1]
    finally:
        engine.close()
