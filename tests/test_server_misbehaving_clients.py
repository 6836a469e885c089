"""The server against clients that misbehave: a client that never reads its replies
while the server shuts down, pipelined and long-polling requests, many connections."""

from __future__ import annotations

import signal
import socket
import struct
import time
from pathlib import Path

import cbor2
import pytest

from spoolq.engines import Lease, open_engine
from spoolq.engines.remote import RemoteEngine
from spoolq.protocol import (
    MAX_AUTH_FRAME,
    ErrorCode,
    FrameTooLarge,
    FrameType,
    ServerProtocol,
    encode_frame,
    encode_preamble,
)

from .servers import ServerProcess, reply_frames, request_frame


def _raw(url: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = url.removeprefix("spoolq://").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect((host, int(port)))
    return sock





# ---- shutdown with a client that does not read ------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sigterm_does_not_wait_for_a_client_that_never_reads(tmp_path: Path, loop: str) -> None:
    """A client pipelines requests whose replies fill its socket and never reads them. On
    SIGTERM the server gives up on that connection after a short while instead of
    waiting out its whole grace period; what it ran is stored, and the lease the client
    took goes back to the queue (the server gave up delivering its replies)."""
    path = str(tmp_path / "q.sqlite")
    big = b"b" * (1 << 20)
    pytest.importorskip(loop)
    with ServerProcess(path, "--loop", loop) as srv:
        eng = RemoteEngine(srv.url)
        try:
            eng.append("big", [big], [len(big)], time.time())
            eng.append("jobs", [b"job"], [3], time.time())
        finally:
            eng.close()
        now = time.time()
        requests = [request_frame(1, "take", queue="jobs", n=1, now=now, lease=["deaf", now + 600]),
                    request_frame(2, "append", queue="put", records=[b"kept"], sizes=[4], now=now)]
        requests += [request_frame(i, "peek", queue="big", n=1) for i in range(3, 100)]
        with _raw(srv.url, rcvbuf=4096) as sock:
            sock.sendall(encode_preamble() + b"".join(requests))
            time.sleep(1.0)  # the replies fill the socket buffers: the server stops writing
            started = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            try:
                code = srv.proc.wait(20)
            finally:
                took = time.monotonic() - started
        assert code == 0
        assert took < 8, f"the shutdown waited {took:.1f} s on a client that does not read"
    check = open_engine(path)
    try:
        assert tuple(check.counts("put"))[:2] == (1, 0)  # the append the server ran is kept
        assert tuple(check.counts("jobs"))[:2] == (1, 0), "the deaf client's lease stayed"
        (rec,) = check.take("jobs", 1, time.time(), Lease("next", time.time() + 60))
        assert (rec.data, rec.attempts) == (b"job", 2)
    finally:
        check.close()


# ---- memory a client that does not read can pin ----------------------------------------


def _rss_mib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_pipelined_reads_a_client_does_not_read_do_not_pile_up_in_the_server(
        tmp_path: Path) -> None:
    """A client pipelines 256 peeks of a 1 MiB record and reads none of the replies. The
    server runs only as many at a time as a few replies of the client's largest size
    hold: it does not keep 256 copies of the record in memory (with records of 16 MiB,
    4 GiB) for a client that is not reading them."""
    path = str(tmp_path / "q.sqlite")
    big = b"b" * (1 << 20)
    with ServerProcess(path) as srv:
        eng = RemoteEngine(srv.url)
        try:
            eng.append("big", [big], [len(big)], time.time())
        finally:
            eng.close()
        before = _rss_mib(srv.proc.pid)
        peeks = b"".join(request_frame(i, "peek", queue="big", n=1) for i in range(1, 257))
        with _raw(srv.url, rcvbuf=4096) as sock:
            sock.sendall(encode_preamble() + peeks)
            time.sleep(2.0)
            grown = _rss_mib(srv.proc.pid) - before
            # The client reads now: every request is still answered, in full.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            assert _read(sock, 8) == encode_preamble()
            answered = []
            for _ in range(256):
                length, kind, ident = struct.unpack(">IBI", _read(sock, 9))
                body = cbor2.loads(_read(sock, length - 5))
                answered.append(ident)
                assert kind == FrameType.REPLY and body[1] == big
        assert grown < 120, f"the server grew by {grown} MiB for replies nobody reads"
        assert sorted(answered) == list(range(1, 257))


def _read(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "the server closed the connection"
        buf += chunk
    return bytes(buf)


# ---- authentication ---------------------------------------------------------------------


def test_an_auth_frame_over_64_kib_is_refused_even_when_it_arrives_whole() -> None:
    """Before authentication only AUTH frames of at most 64 KiB are read: a longer one is
    refused with FRAME_TOO_LARGE whether its bytes arrive in pieces or at once (a token
    padded past the limit is not accepted)."""
    frame = encode_frame(FrameType.AUTH, 1, {"token": "s3cret", "pad": b"x" * 70000})
    assert len(frame) - 4 > MAX_AUTH_FRAME
    for pieces in ([frame], [frame[:20], frame[20:]]):
        server = ServerProtocol(token="s3cret")
        server.receive_data(encode_preamble())
        with pytest.raises(FrameTooLarge):
            for piece in pieces:
                server.receive_data(piece)
        out = server.data_to_send()[8:]
        ((kind, _, body),) = reply_frames(out)
        assert kind == FrameType.ERROR and body["code"] == ErrorCode.FRAME_TOO_LARGE
        assert not server.authenticated


# ---- a take or peek of more records than a reply holds ----------------------------------


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.parametrize("op", ["take", "peek"])
def test_a_read_of_every_record_loads_only_about_what_its_reply_holds(
        tmp_path: Path, op: str) -> None:
    """A take or peek of n = 2**31 - 1 (what ``get_many()`` of every ready item asks for)
    from a queue of 120 MiB, by a client accepting replies of 4 MiB: the server reads
    about what the reply holds, not the whole queue into memory (and, for a take, writes
    most of it back). The records not returned stay in place, in order."""
    path = str(tmp_path / "q.sqlite")
    item = b"i" * (1 << 20)
    with ServerProcess(path) as srv:
        eng = RemoteEngine(srv.url, max_reply=4 << 20)
        try:
            for _ in range(12):
                eng.append("q", [item] * 10, [len(item)] * 10, time.time())
            before = _rss_mib(srv.proc.pid, "VmHWM")  # the peak, so far
            if op == "take":
                got = eng.take("q", 2**31 - 1, time.time(), None)
            else:
                got = eng.peek("q", 2**31 - 1)
            grown = _rss_mib(srv.proc.pid, "VmHWM") - before
            assert len(got) == 3 and [r.id for r in got] == [1, 2, 3]
            assert eng.counts("q").ready == (117 if op == "take" else 120)
            assert eng.peek("q", 1)[0].id == (4 if op == "take" else 1)
        finally:
            eng.close()
    assert grown < 60, f"the server grew by {grown} MiB for a reply of 4 MiB"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sigterm_keeps_the_leases_of_an_idle_tls_client_that_got_its_replies(
        tmp_path: Path, loop: str) -> None:
    """An idle TLS client holds a lease and does not answer the server's close_notify
    (it reads nothing while idle). The server does not wait for it, and as the client
    received every reply, its lease stays: a server shutdown keeps leases."""
    from .test_server import _self_signed

    pytest.importorskip(loop)
    cert, key = _self_signed(tmp_path)
    path = str(tmp_path / "q.sqlite")
    with ServerProcess(path, "--tls-cert", str(cert), "--tls-key", str(key),
                       "--loop", loop) as srv:
        eng = RemoteEngine(f"{srv.url}?ca={cert}")
        try:
            eng.append("jobs", [b"job"], [3], time.time())
            assert len(eng.take("jobs", 1, time.time(), Lease("idle", time.time() + 600))) == 1
            started = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            assert srv.proc.wait(20) == 0
            took = time.monotonic() - started
        finally:
            eng.close()
    assert took < 8, f"the shutdown waited {took:.1f} s on an idle TLS client"
    check = open_engine(path)
    try:
        assert tuple(check.counts("jobs"))[:2] == (0, 1), "the idle client's lease was ended"
    finally:
        check.close()
