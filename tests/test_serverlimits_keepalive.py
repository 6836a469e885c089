"""The server probes an idle connection with TCP keepalive, so that a client that vanished
without closing (its host lost power, the network split) is dropped and frees its slot
and its leases. Read from the kernel's own table of sockets (/proc/net/tcp): the timer the
server's end of a connection has armed, and when it fires."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from spoolq._serverlimits import KEEPALIVE
from spoolq.protocol import VERSION, encode_preamble

from .servers import ServerProcess

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"),
                                reason="reads the kernel's socket table of Linux")

_KEEPALIVE_TIMER = 2  # /proc/net/tcp's "tr" field: the keepalive timer is pending
_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of its "tm->when" field


def _timer(local_port: int, remote_port: int) -> tuple[int, float]:
    """The timer kind and the seconds until it fires of the socket 127.0.0.1:local_port
    connected to 127.0.0.1:remote_port."""
    want = (f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == want:
            kind, when = fields[5].split(":")
            return int(kind, 16), int(when, 16) / _TICKS
    raise AssertionError(f"no socket {want} in /proc/net/tcp")


def test_an_idle_connection_is_probed(tmp_path: Path) -> None:
    with ServerProcess(str(tmp_path / "q.sqlite")) as server, \
            socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(encode_preamble(VERSION))
        client.recv(64)  # the server's preamble: the connection is served
        kind, fires_in = _timer(server.port, client.getsockname()[1])
    idle = KEEPALIVE[0]
    assert kind == _KEEPALIVE_TIMER
    assert idle - 5 < fires_in <= idle

