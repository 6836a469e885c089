"""A client that trickles its handshake a byte at a time, never silent for the stall
timeout, is dropped once the handshake has taken the stall timeout: a client that never
authenticates cannot hold a connection (and its file descriptor) for ever."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest

from spoolq.engines.remote import RemoteEngine
from spoolq.protocol import ErrorCode, FrameType, encode_frame, encode_preamble

from .servers import ServerProcess, reply_frames, request_frame

_STALL = 2.0
_EVERY = 0.5  # seconds between the bytes of a trickle: never silent for _STALL
_GIVE_UP = 15.0  # seconds of trickling after which the server surely held on for good


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("spoolq://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.settimeout(_EVERY)
    return sock


def _trickle(sock: socket.socket, data: bytes, every: float = _EVERY) -> tuple[bytes, float]:
    """Send ``data`` a byte every ``every`` seconds (never silent for _STALL) until the
    server ends the connection; return what it sent and how long that took."""
    sock.settimeout(every)
    start = time.monotonic()
    received = b""
    pos = 0
    while time.monotonic() - start < _GIVE_UP:
        if pos < len(data):
            try:
                sock.sendall(data[pos:pos + 1])
            except OSError:
                break
            pos += 1
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - start


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_auth_frame_trickled_a_byte_at_a_time_is_cut_off(tmp_path: Path, loop: str) -> None:
    pytest.importorskip(loop)
    token = tmp_path / "token"
    token.write_text("s3cret")
    with ServerProcess(str(tmp_path / "q.sqlite"), "--token-file", str(token),
                       "--stall-timeout", str(_STALL), "--loop", loop) as srv:
        sock = _connect(srv.url)
        try:
            # A whole preamble, then an AUTH frame of 60000 bytes sent a byte at a time.
            received, took = _trickle(
                sock, encode_preamble() + struct.pack(">IBI", 60000, FrameType.AUTH, 1)
                + b"\xa1" * 59995)
        finally:
            sock.close()
        assert took < _GIVE_UP - 1, "the server kept the trickling connection"
        # (the server's preamble first if the client's was whole by then)
        ((ftype, ident, body),) = reply_frames(received.removeprefix(encode_preamble()))
        assert (ftype, ident, body["code"]) == (FrameType.ERROR, 0, ErrorCode.TIMEOUT)
        # The others are served as before.
        eng = RemoteEngine(f"{srv.url}/q", token="s3cret")
        try:
            assert eng.counts("q").ready == 0
        finally:
            eng.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_preamble_trickled_a_byte_at_a_time_is_cut_off(tmp_path: Path, loop: str) -> None:
    pytest.importorskip(loop)
    with ServerProcess(str(tmp_path / "q.sqlite"), "--stall-timeout", str(_STALL),
                       "--loop", loop) as srv:
        sock = _connect(srv.url)
        try:
            # 7 bytes of the 8, one a second: it is cut off before it could go silent.
            received, took = _trickle(sock, encode_preamble()[:7], every=1.0)
        finally:
            sock.close()
        assert took < 6, "the server kept the trickling connection"
        ((ftype, ident, body),) = reply_frames(received)
        assert (ftype, ident, body["code"]) == (FrameType.ERROR, 0, ErrorCode.TIMEOUT)


def test_a_handshake_sent_at_once_then_idle_is_kept(tmp_path: Path) -> None:
    """Only the handshake has a deadline: an authenticated connection may stay idle."""
    token = tmp_path / "token"
    token.write_text("s3cret")
    with ServerProcess(str(tmp_path / "q.sqlite"), "--token-file", str(token),
                       "--stall-timeout", str(_STALL)) as srv:
        sock = _connect(srv.url)
        sock.settimeout(10)
        try:
            sock.sendall(encode_preamble() + encode_frame(FrameType.AUTH, 1, {"token": "s3cret"}))
            time.sleep(3 * _STALL)
            sock.sendall(request_frame(2, "counts", queue="q"))
            received = b""
            while len(reply_frames(received[8:])) < 2:
                chunk = sock.recv(65536)
                assert chunk, "the server closed an idle authenticated connection"
                received += chunk
        finally:
            sock.close()
        assert reply_frames(received[8:]) == [(FrameType.REPLY, 1, None),
                                              (FrameType.REPLY, 2, [0, 0, 0, 0])]
