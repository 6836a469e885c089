"""A client that leaves in the middle of the TLS handshake: the server's log line says
why the handshake did not end, never an empty reason."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from tests.servers import ServerProcess, wait_until
from tests.test_server import _self_signed


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("leaves", [True, False])
def test_a_client_leaving_mid_handshake_is_logged_with_a_reason(
        tmp_path: Path, loop: str, leaves: bool) -> None:
    pytest.importorskip(loop)
    cert, key = _self_signed(tmp_path)
    log = tmp_path / "server.log"
    with ServerProcess(str(tmp_path / "q.sqlite"), "--tls-cert", str(cert), "--tls-key",
                       str(key), "--loop", loop, "--stall-timeout", "2", log_file=log) as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        host, port = sock.getsockname()[:2]
        where = f"{host}:{port}"
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello begins
        if leaves:
            sock.close()
        try:  # it leaves, or stalls until the handshake times out
            wait_until(lambda: where in log.read_text(errors="replace").replace(
                f"connection from {where}", ""), within=10)
        finally:
            sock.close()
    lines = [line for line in log.read_text(errors="replace").splitlines()
             if where in line and "connection from" not in line]
    assert lines, log.read_text(errors="replace")
    for line in lines:
        assert not re.search(r"[:(]\s*\)?$", line), line
