"""A server at its file-descriptor limit (``ulimit -n`` lowered in its process) with
clients still connecting: it keeps serving the connections it has, pauses accepting
without filling its log or spinning, accepts again once descriptors are free, and stops
cleanly."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spoolq.protocol import encode_preamble

from .servers import SRC, reply_frames, request_frame

_LIMIT = 64  # descriptors of the server process
_HELD = 5.0  # seconds the clients hold every descriptor


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ask(sock: socket.socket, frame: bytes, skip: int = 0) -> object:
    sock.sendall(frame)
    data = b""
    while len(reply_frames(data[skip:])) < 1:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    return reply_frames(data[skip:])[0][2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_server_out_of_descriptors_keeps_serving_and_stops_cleanly(
        tmp_path: Path, loop: str) -> None:
    pytest.importorskip(loop)
    log = tmp_path / "server.log"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (_LIMIT, _LIMIT))

    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spoolq.server", str(tmp_path / "q.sqlite"), "--port", "0",
             "--loop", loop, "--log-level", "WARNING"],
            stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, "PYTHONPATH": SRC},
            preexec_fn=limit)  # noqa: PLW1509 - setrlimit only, nothing that locks
    held: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        first = socket.create_connection(("127.0.0.1", port), timeout=10)
        held.append(first)
        assert _ask(first, encode_preamble() + request_frame(1, "counts", queue="q"),
                    skip=8) == [0, 0, 0, 0]
        # More connections than descriptors, each with its handshake done (not dropped).
        for _ in range(_LIMIT + 20):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(encode_preamble())
            held.append(sock)
        time.sleep(0.5)
        cpu = _cpu(proc.pid)
        time.sleep(_HELD)
        spent = _cpu(proc.pid) - cpu
        # The connection it had is still served.
        assert _ask(first, request_frame(2, "append", queue="q", records=[b"x"], sizes=[1],
                                         now=1.0)) == [1]
        complaints = log.read_text(errors="replace").count("\n")
        assert complaints <= 2 * _HELD + 5, log.read_text(errors="replace")[-3000:]
        assert spent < _HELD / 4, f"the server spent {spent:.2f} s of CPU in {_HELD} s idle"
        for sock in held[1:]:
            sock.close()
        del held[1:]
        # Once descriptors are free it accepts and serves new clients again.
        deadline = time.monotonic() + 15
        while True:
            try:
                late = socket.create_connection(("127.0.0.1", port), timeout=10)
                held.append(late)
                assert _ask(late, encode_preamble() + request_frame(3, "counts", queue="q"),
                            skip=8) == [1, 0, 1, 1]
                break
            except (OSError, AssertionError):
                assert time.monotonic() < deadline, "the server did not accept again"
                time.sleep(0.5)
        for sock in held:
            sock.close()
        held.clear()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        for sock in held:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
