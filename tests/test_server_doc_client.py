"""The server against docs/protocol.md, through a client written from that document
alone (raw sockets and cbor2, none of spoolq's protocol code), and bodies that cost the
server's event loop more than their size."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from .servers import ServerProcess
from .test_server import _self_signed

TOKEN = "tok-3f9a-not-in-any-log"


class DocClient:
    """A spoolq client as docs/protocol.md describes one: an 8-byte preamble each way,
    then frames of u32 length, u8 type, u32 id and one CBOR body."""

    def __init__(self, port: int, *, version: int = 2, sock: socket.socket | None = None,
                 timeout: float = 10.0) -> None:
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.sock.sendall(b"SPOOLQ" + struct.pack(">H", version))

    def preamble(self) -> tuple[bytes, int]:
        head = self._read(8)
        return head[:6], struct.unpack(">H", head[6:])[0]

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError(f"the server ended the stream ({len(self.buf)} bytes left)")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send_raw(self, ftype: int, ident: int, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">IBI", len(payload) + 5, ftype, ident) + payload)

    def send(self, ftype: int, ident: int, body: Any) -> None:
        self.send_raw(ftype, ident, cbor2.dumps(body))

    def request(self, ident: int, op: str, **fields: Any) -> None:
        self.send(2, ident, {"op": op, **fields})

    def frame(self) -> tuple[int, int, Any]:
        (length,) = struct.unpack(">I", self._read(4))
        ftype, ident = struct.unpack(">BI", self._read(5))
        return ftype, ident, cbor2.loads(self._read(length - 5))

    def call(self, ident: int, op: str, **fields: Any) -> tuple[int, int, Any]:
        self.request(ident, op, **fields)
        return self.frame()

    def closed(self) -> bool:
        """Whether the server ended the connection (after the frames read so far)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def _ready(port: int, token: str | None = None) -> DocClient:
    client = DocClient(port)
    assert client.preamble() == (b"SPOOLQ", 2)
    if token is not None:
        client.send(1, 1, {"token": token})
        assert client.frame() == (3, 1, None)
    return client


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(":memory:", "--stall-timeout", "1",
                       log_file=tmp_path / "server.log") as srv:
        yield srv


def _round_trip(port: int) -> float:
    """Seconds a fresh connection takes for a handshake and a ``counts``."""
    start = time.monotonic()
    client = _ready(port)
    try:
        assert client.call(1, "counts", queue="q") == (3, 1, [0, 0, 0, 0])
    finally:
        client.close()
    return time.monotonic() - start


# ---- bodies that cost more to decode than their size -----------------------------------


def _colliding_keys(n: int) -> bytes:
    """A CBOR map of ``n`` integer keys that Python hashes alike (multiples of the
    hash modulus), plus ``op``: a dict takes time quadratic in ``n`` to build it."""
    modulus = 2**61 - 1
    items = b"".join(cbor2.dumps(k * modulus) + b"\x00" for k in range(1, n))
    return b"\xba" + struct.pack(">I", n) + cbor2.dumps("op") + cbor2.dumps("queues") + items


@pytest.mark.parametrize("body", [
    # tag 35: cbor2 compiles the text as a regular expression (seconds for a few MiB)
    pytest.param(lambda: cbor2.dumps({"op": "counts",
                                      "queue": cbor2.CBORTag(35, "a" * (4 << 20))}),
                 id="regex-tag"),
    pytest.param(lambda: _colliding_keys(30_000), id="colliding-keys"),
])
def test_a_body_costly_to_decode_is_refused_without_holding_up_other_clients(
    server: ServerProcess, body: Any,
) -> None:
    # Request bodies are decoded on the server's event loop: a body whose decoding took
    # seconds (a semantic tag cbor2 acts on, a map whose keys all hash alike) stopped
    # every other connection for that long, for one frame well within --max-frame.
    payload = body()
    attacker = _ready(server.port)
    attacker.send_raw(2, 7, payload)
    time.sleep(0.3)  # the frame has arrived and is being decoded
    assert _round_trip(server.port) < 1.0
    ftype, ident, err = attacker.frame()
    assert (ftype, ident, err["code"]) == (4, 7, 1)  # PROTOCOL: not a request body
    assert attacker.closed()
    attacker.close()


# ---- what docs/protocol.md says, checked with the client above --------------------------


def test_handshake_version_negotiation_and_connection_errors(server: ServerProcess) -> None:
    newer = DocClient(server.port, version=7)
    assert newer.preamble() == (b"SPOOLQ", 2)  # min(client's, server's)
    assert newer.call(3, "hello", max_reply=10)[2]["version"] == 2
    older = DocClient(server.port, version=1)
    assert older.preamble() == (b"SPOOLQ", 1)
    ftype, ident, err = older.frame()
    assert (ftype, ident, err["code"]) == (4, 0, 3) and older.closed()
    for c in (newer, older):
        c.close()
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    raw.sendall(b"SPOOLX\x00\x02")
    wrong = DocClient(server.port, sock=raw)  # its own preamble comes after the bad one
    ftype, ident, err = wrong.frame()  # an ERROR instead of a preamble
    assert (ftype, ident, err["code"]) == (4, 0, 1) and wrong.closed()
    wrong.close()


def test_ops_pipelined_with_out_of_order_replies_and_server_side_long_polls(
    server: ServerProcess,
) -> None:
    c = _ready(server.port)
    now = time.time()
    c.request(1, "take", queue="jobs", n=1, now=now, lease=["me", now + 60], wait=0.5)
    c.request(2, "append", queue="jobs", records=[b"r1", b"r2"], sizes=[2, 2], now=now)
    c.request(3, "wait", queue="empty", timeout=0.4)
    c.request(4, "counts", queue="jobs")
    start = time.monotonic()
    replies = {}
    for _ in range(4):
        ftype, ident, body = c.frame()
        assert ftype == 3
        replies[ident] = (body, time.monotonic() - start)
    assert replies[2][0] == [1, 2]
    (rid, data, raw, attempts, _, reason) = replies[1][0]  # woken by the append
    assert (rid, data, raw, attempts, reason) == (1, b"r1", 2, 1, None)
    assert replies[1][1] < 0.4
    assert replies[3][0] is False and replies[3][1] >= 0.35  # the server's own timeout
    assert c.call(5, "ack", queue="jobs", deliveries=[[1, 1]], owner="me") == (3, 5, [1])
    assert c.call(6, "peek", queue="jobs", n=2**31 - 1)[2][:2] == [2, b"r2"]
    assert c.call(7, "take", queue="jobs", n=0, now=now, wait=86400) == (3, 7, [])
    cases: list[tuple[int, str, dict[str, Any], int | None]] = [
        (8, "nope", {}, 10), (9, "take", {"queue": "q", "n": 2**31, "now": 1}, 10),
        (10, "wait", {"queue": "q", "timeout": 86401}, 10), (11, "ack", {"queue": "q"}, 10),
        (12, "ack", {"queue": "jobs", "deliveries": [[2, 5]], "owner": "x"}, None),
    ]
    for ident, op, fields, code in cases:
        ftype, got, body = c.call(ident, op, **fields)
        assert got == ident
        if code is None:
            assert (ftype, body) == (3, [])  # not held by x: nothing removed
        else:
            assert ftype == 4 and body["code"] == code
    assert c.call(13, "bye") == (3, 13, None)
    c.close()


def test_frame_limit_stall_and_token_as_documented(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    log = tmp_path / "server.log"
    with ServerProcess(":memory:", "--token-file", str(token_file), "--max-frame", "4096",
                       "--stall-timeout", "0.5", log_file=log) as srv:
        early = DocClient(srv.port)
        early.preamble()
        early.request(5, "queues")  # before AUTH
        assert early.frame()[2]["code"] == 4 and early.closed()
        wrong = DocClient(srv.port)
        wrong.preamble()
        wrong.send(1, 3, {"token": TOKEN[:-1] + "X"})
        assert wrong.frame()[:2] == (4, 3) and wrong.closed()
        big = _ready(srv.port, TOKEN)
        big.sock.sendall(struct.pack(">IBI", 4097, 2, 9))  # the header only
        ftype, ident, err = big.frame()
        assert (ftype, err["code"]) == (4, 2) and big.closed()
        half = _ready(srv.port, TOKEN)
        half.sock.sendall(struct.pack(">IBI", 100, 2, 9) + b"\xa1")
        start = time.monotonic()
        ftype, ident, err = half.frame()
        assert (ftype, ident, err["code"]) == (4, 0, 5) and half.closed()
        assert 0.4 < time.monotonic() - start < 3
        for c in (early, wrong, big, half):
            c.close()
    text = log.read_text()
    assert "refused" in text or "token" in text  # the refusals were logged...
    assert TOKEN not in text and TOKEN[:-1] not in text  # ...without the tokens


def test_tls_with_the_documented_handshake(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with ServerProcess(":memory:", "--tls-cert", str(cert), "--tls-key", str(key)) as srv:
        ctx = ssl.create_default_context(cafile=str(cert))
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        c = DocClient(srv.port, sock=ctx.wrap_socket(raw, server_hostname="127.0.0.1"))
        assert c.preamble() == (b"SPOOLQ", 2)
        assert c.call(1, "append", queue="q", records=[b"x"], sizes=[1], now=1.0) == (3, 1, [1])
        c.close()
