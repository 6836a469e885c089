"""The server's connections against clients that disconnect, stall, pipeline or misbehave
at awkward moments, and against signals that stop it while clients wait or write."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from pathlib import Path

import pytest

from spoolq.engines import open_engine
from spoolq.protocol import encode_preamble

from .servers import ThreadedServer, request_frame


def test_an_idle_tls_client_that_does_not_answer_the_close_is_logged_as_such(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A TLS client that got every reply but does not answer the server's close at
    shutdown is cut off with an INFO line saying so, not a warning that it read none of
    its replies; it keeps its lease."""
    from .test_server import _self_signed

    cert, key = _self_signed(tmp_path)
    path = tmp_path / "q.sqlite"
    eng = open_engine(path)
    eng.append("jobs", [b"job"], [3], time.time())
    eng.close()
    srv = ThreadedServer(str(path), tls_cert=cert, tls_key=key)
    ctx = ssl.create_default_context(cafile=str(cert))
    host, port = srv.url.removeprefix("spoolq://").rsplit(":", 1)
    sock = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10),
                           server_hostname=host)
    try:
        with caplog.at_level(logging.INFO, logger="spoolq"):
            now = time.time()
            sock.sendall(encode_preamble() + request_frame(
                1, "take", queue="jobs", n=1, now=now, lease=["idle", now + 600]))
            got = b""
            while len(got) < 8 + 9:  # the preamble and the reply's header, at least
                got += sock.recv(65536)
            time.sleep(0.2)
            srv.stop()
        messages = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert not [m for lvl, m in messages if lvl >= logging.WARNING and "read none" in m], \
            messages
        assert [m for lvl, m in messages if lvl == logging.INFO
                and "did not close its connection" in m], messages
    finally:
        sock.close()
        srv.stop()
    check = open_engine(path)
    try:
        assert tuple(check.counts("jobs"))[:2] == (0, 1)  # the lease stays with its owner
    finally:
        check.close()
