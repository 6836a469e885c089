"""What one request body can make a real server subprocess hold in memory: a body whose
CBOR items would take many times its size once decoded (millions of empty arrays or maps,
tiny byte strings, short texts) is refused with a BAD_REQUEST naming the limit before it is
decoded, the connection goes on, and large requests the protocol allows still run. And a
request whose reply of ids could not fit in what the client accepts is refused too."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from spoolq._serverlimits import decode_budget
from spoolq.engines.remote import RemoteEngine
from spoolq.protocol import (
    ClientProtocol,
    ErrorCode,
    FrameDecoder,
    FrameType,
    ReplyTooLarge,
    encode_preamble,
    max_ids,
)

from .servers import ServerProcess, request_frame

_MAX_FRAME = 1 << 20


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


class _Conn:
    """A raw client: the preamble sent, frames read one by one."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(encode_preamble())
        self.buf = self._exactly(8)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def frame(self) -> tuple[int, int, bytes]:
        length, ftype, ident = struct.unpack(">IBI", self._exactly(9))
        return ftype, ident, self._exactly(length - 5)

    def ask(self, ident: int, raw_body: bytes,
            ftype: int = FrameType.REQUEST) -> tuple[int, object]:
        self.sock.sendall(struct.pack(">IBI", len(raw_body) + 5, ftype, ident) + raw_body)
        got_type, got_id, body = self.frame()
        assert got_id == ident
        return got_type, cbor2.loads(body)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path = str(tmp_path_factory.mktemp("bodies") / "q.sqlite")
    with ServerProcess(path, "--max-frame", str(_MAX_FRAME), "--loop", "asyncio") as srv:
        yield srv


def _map(field: str, value: bytes, op: str = "counts") -> bytes:
    """``{"op": op, "queue": "q", field: value}`` with ``value`` already CBOR."""
    return (b"\xa3" + cbor2.dumps("op") + cbor2.dumps(op) + cbor2.dumps("queue")
            + cbor2.dumps("q") + cbor2.dumps(field) + value)


def _filled(field: str, item: bytes, op: str = "counts") -> bytes:
    """A body of about the server's max_frame: an array of ``item`` repeated."""
    n = (_MAX_FRAME - 64) // len(item)
    return _map(field, b"\x9a" + n.to_bytes(4, "big") + item * n, op)


_HOSTILE = {
    "empty arrays in a field the op does not take": _filled("x", b"\x80"),
    "empty maps as the records of an append": _filled("records", b"\xa0", "append"),
    "empty deliveries of an ack": _filled("deliveries", b"\x80", "ack"),
    "simple values": _filled("x", b"\xe0"),
    "short texts": _filled("owners", b"\x62ab", "expire"),
    "an indefinite array of empty maps": _map("x", b"\x9f" + b"\xa0" * (_MAX_FRAME - 64) + b"\xff"),
}


@pytest.mark.parametrize("shape", list(_HOSTILE))
def test_a_body_that_would_take_too_much_memory_is_refused_before_it_is_decoded(
        server: ServerProcess, shape: str) -> None:
    """Each of these bodies takes over 50 times its 1 MiB once decoded (over 50 MiB); the
    server answers BAD_REQUEST naming the limit, its peak memory barely moves, and the
    same connection is served next."""
    conn = _Conn(server.port)
    try:
        assert conn.ask(1, cbor2.dumps({"op": "counts", "queue": "q"}))[0] == FrameType.REPLY
        before = _peak_rss_mib(server.proc.pid)
        ftype, body = conn.ask(2, _HOSTILE[shape])
        grew = _peak_rss_mib(server.proc.pid) - before
        assert grew < 24, f"the server's peak memory grew by {grew:.0f} MiB"
        assert ftype == FrameType.ERROR
        assert isinstance(body, dict) and body["code"] == ErrorCode.BAD_REQUEST
        assert f"{decode_budget(_MAX_FRAME):,}" in body["message"], body
        assert "max_frame" in body["message"]
        ftype, counts = conn.ask(3, cbor2.dumps({"op": "counts", "queue": "q"}))
        assert ftype == FrameType.REPLY and isinstance(counts, list)
    finally:
        conn.sock.close()


def test_an_auth_frame_that_would_take_too_much_memory_closes_the_connection(
        server: ServerProcess) -> None:
    """A server without a token reads AUTH frames of any size: one of 1 MiB of empty arrays
    is a protocol error (code 1), and the connection is closed, as for any bad AUTH."""
    conn = _Conn(server.port)
    try:
        n = _MAX_FRAME - 64
        before = _peak_rss_mib(server.proc.pid)
        ftype, body = conn.ask(1, b"\xa1" + cbor2.dumps("token") + b"\x9a"
                               + n.to_bytes(4, "big") + b"\x80" * n, FrameType.AUTH)
        assert _peak_rss_mib(server.proc.pid) - before < 24
        assert ftype == FrameType.ERROR and isinstance(body, dict)
        assert body["code"] == ErrorCode.PROTOCOL and "max_frame" in body["message"]
        assert conn.sock.recv(1) == b""
    finally:
        conn.sock.close()


def test_the_largest_requests_the_protocol_allows_still_run(server: ServerProcess) -> None:
    """An ack of as many deliveries as a reply of max_frame bytes holds ids for (the
    costliest request there is to decode), and an append of as many tiny records."""
    n = max_ids(_MAX_FRAME)
    conn = _Conn(server.port)
    try:
        deliveries = [[70000 + i, 1] for i in range(n)]
        ftype, ids = conn.ask(1, cbor2.dumps({"op": "ack", "queue": "big", "owner": "o",
                                              "deliveries": deliveries}))
        assert (ftype, ids) == (FrameType.REPLY, [])
        ftype, ids = conn.ask(2, cbor2.dumps({"op": "append", "queue": "big",
                                              "records": [b"ab"] * n, "sizes": [2] * n,
                                              "now": time.time()}))
        assert ftype == FrameType.REPLY and isinstance(ids, list) and len(ids) == n
    finally:
        conn.sock.close()


# ---- replies of ids ----------------------------------------------------------------------


def test_an_append_whose_reply_of_ids_would_not_fit_the_clients_max_reply_is_refused(
        tmp_path: Path) -> None:
    """A client that accepts replies of 1024 bytes appends 250 records to a queue whose ids
    take 5 bytes each: their reply (over 1,250 bytes) would be a frame the client must
    refuse. The server refuses the request instead (BAD_REQUEST naming the limit), stores
    nothing, and the connection goes on."""
    with ServerProcess(":memory:", "--max-frame", str(_MAX_FRAME)) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            now = time.time()
            sock.sendall(encode_preamble()
                         + request_frame(1, "append", queue="q", records=[b""] * 70000,
                                         sizes=[0] * 70000, now=now)
                         + request_frame(2, "hello", max_reply=1024)
                         + request_frame(3, "append", queue="q", records=[b"x"] * 250,
                                         sizes=[1] * 250, now=now)
                         + request_frame(4, "counts", queue="q"))
            client = FrameDecoder(1 << 20)
            data, frames = b"", []
            while len(frames) < 4:
                chunk = sock.recv(1 << 16)
                assert chunk, "the server closed the connection"
                if len(data) < 8:  # the server's preamble first
                    data += chunk
                    chunk, data = data[8:], data[:8]
                frames += client.feed(chunk)
            by_id = {f.id: f for f in frames}
        third, counts = by_id[3], by_id[4]
        assert len(third.body) + 5 <= 1024, "a reply larger than the client accepts"
        assert third.type == FrameType.ERROR
        error = cbor2.loads(third.body)
        assert error["code"] == ErrorCode.BAD_REQUEST
        assert "250 records" in error["message"] and "111" in error["message"]
        assert cbor2.loads(counts.body)[0] == 70000  # the refused append stored nothing


def test_the_client_splits_by_the_servers_max_frame_when_it_accepts_more() -> None:
    """A client whose max_reply is above the server's max_frame keeps its appends within
    the ids a reply of the server's max_frame holds: the server sends no larger reply."""
    proto = ClientProtocol(max_frame=64 << 20)
    proto.server_max_frame = _MAX_FRAME
    n = max_ids(_MAX_FRAME) + 1
    with pytest.raises(ReplyTooLarge) as caught:
        proto.request("append", {"queue": "q", "records": [b""] * n, "sizes": [0] * n,
                                 "now": 0.0})
    assert caught.value.fits == max_ids(_MAX_FRAME)


def test_a_python_client_accepting_large_replies_still_appends_in_one_call(
        server: ServerProcess) -> None:
    n = max_ids(_MAX_FRAME) + 1000
    eng = RemoteEngine(f"{server.url}/big", max_reply=64 << 20)
    try:
        ids = eng.append("split", [b"r"] * n, [1] * n, time.time())
        assert len(ids) == n
        assert eng.counts("split").ready == n
    finally:
        eng.close()
