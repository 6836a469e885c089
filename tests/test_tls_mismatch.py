"""TLS on one side and not the other, or a certificate the client cannot verify: the
client says so at once, naming the server, as a setting to fix (ConfigurationError, not
Unavailable); the server logs what happened and goes on serving."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import cbor2
import pytest

import spoolq
from spoolq.protocol import ErrorCode, FrameDecoder, ProtocolError, ServerProtocol
from tests.servers import ServerProcess, wait_until
from tests.test_server import _needs, _self_signed

CONNECT_TIMEOUT = 10.0
PROMPT = 3.0  # seconds: well under CONNECT_TIMEOUT


def _refused(url: str, **options: object) -> tuple[spoolq.TLSMismatch, float]:
    """The error opening ``url`` raises, and the seconds it took."""
    start = time.monotonic()
    with pytest.raises(spoolq.TLSMismatch) as info:
        spoolq.SyncQueue.create(url, engine_options={"connect_timeout": CONNECT_TIMEOUT,
                                                     **options})
    took = time.monotonic() - start
    exc = info.value
    # a setting to fix: a caller that waits out an Unavailable server must not wait on it
    assert isinstance(exc, spoolq.ConfigurationError)
    assert isinstance(exc, spoolq.EngineError)  # as every failed TLS handshake
    assert not isinstance(exc, spoolq.Unavailable)
    return exc, took


def _logged(log: Path, text: str) -> None:
    wait_until(lambda: text in log.read_text(errors="replace"), within=5)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_tls_client_of_a_server_without_tls(tmp_path: Path, loop: str) -> None:
    _needs(loop)
    cert, _ = _self_signed(tmp_path)
    log = tmp_path / "server.log"
    with ServerProcess(":memory:", "--loop", loop, log_file=log) as server:
        where = f"127.0.0.1:{server.port}"
        for url, options in ((f"{server.url}/jobs?tls=1", {}),
                             (f"{server.url}/jobs", {"ca_file": str(cert)})):
            exc, took = _refused(url, **options)
            assert took < PROMPT
            assert f"the server at {where} did not answer with TLS" in str(exc)
            assert "without --tls-cert" in str(exc)
        _logged(log, "the client speaks TLS to this server, which runs without TLS")
        with spoolq.SyncQueue.create(server.url + "/jobs") as q:  # served as before
            q.put("plain")
            assert q.get(timeout=5) == "plain"
        assert server.proc.poll() is None


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_without_tls_of_a_tls_server(tmp_path: Path, loop: str) -> None:
    _needs(loop)
    cert, key = _self_signed(tmp_path)
    log = tmp_path / "server.log"
    with ServerProcess(":memory:", "--tls-cert", str(cert), "--tls-key", str(key),
                       "--loop", loop, log_file=log) as server:
        exc, took = _refused(f"{server.url}/jobs")
        assert took < PROMPT
        assert f"the server at 127.0.0.1:{server.port}" in str(exc)
        assert "is it a TLS server" in str(exc) and "?tls=1" in str(exc)
        _logged(log, "closing a connection that does not speak TLS")
        with spoolq.SyncQueue.create(server.url + "/jobs",
                                     engine_options={"ca_file": str(cert)}) as q:
            q.put("secret")
            assert q.get(timeout=5) == "secret"
        assert server.proc.poll() is None


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_that_cannot_verify_the_certificate(tmp_path: Path, loop: str) -> None:
    _needs(loop)
    cert, key = _self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    other, _ = _self_signed(tmp_path / "other")  # a certificate that did not sign the server's
    log = tmp_path / "server.log"
    with ServerProcess(":memory:", "--tls-cert", str(cert), "--tls-key", str(key),
                       "--loop", loop, log_file=log) as server:
        where = f"127.0.0.1:{server.port}"
        for url, options in ((f"{server.url}/jobs", {"ca_file": str(other)}),
                             (f"{server.url}/jobs?tls=1", {})):  # the system's CAs
            exc, took = _refused(url, **options)
            assert took < PROMPT
            assert f"TLS with the spoolq server at {where} failed: its certificate failed " \
                "verification" in str(exc)
            assert "ca_file" in str(exc)
            assert isinstance(exc.__cause__, ssl.SSLCertVerificationError)
        _logged(log, "a client's TLS handshake failed (TLSV1_ALERT_UNKNOWN_CA): does it trust "
                     "this server's certificate")
        assert server.proc.poll() is None


def test_a_server_that_closes_before_its_greeting_without_tls_is_unavailable() -> None:
    """A server that closes new connections at once (one stopping, say) and does not speak
    TLS either is an outage, as before: only a server that answers TLS is a mismatch."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def close_each() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=close_each, daemon=True)
    thread.start()
    try:
        with pytest.raises(spoolq.Unavailable) as info:
            spoolq.SyncQueue.create(f"spoolq://127.0.0.1:{port}/jobs",
                                    engine_options={"connect_timeout": CONNECT_TIMEOUT})
        assert not isinstance(info.value, spoolq.ConfigurationError)
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_the_protocol_names_a_tls_hello_on_a_port_without_tls() -> None:
    hello = bytes.fromhex("16030100f4010000f00303") + bytes(240)  # a client's TLS hello
    server = ServerProtocol()
    with pytest.raises(ProtocolError, match="the client speaks TLS to this server"):
        server.receive_data(hello)
    out = server.data_to_send()
    (frame,) = FrameDecoder().feed(out)  # no preamble: the peer is no spoolq client
    assert frame.id == 0  # an error about the whole connection, which is closed
    assert cbor2.loads(frame.body)["code"] == ErrorCode.PROTOCOL
    server = ServerProtocol()  # other bytes are not the spoolq protocol, as before
    with pytest.raises(ProtocolError, match="bad magic"):
        server.receive_data(b"GET / HTTP/1.1\r\n")
