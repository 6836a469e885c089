"""A client written from docs/protocol.md alone (a socket, struct and a CBOR library, none
of spoolq's code) against a real ``python -m spoolq.server`` process: the document is
enough to implement the protocol in another language."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from tests.servers import ServerProcess

AUTH, REQUEST, REPLY, ERROR = 1, 2, 3, 4


class SpecClient:
    """The preamble, then frames of ``u32 length | u8 type | u32 id | CBOR body``."""

    def __init__(self, port: int, version: int = 2) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.next_id = 1
        self.sock.sendall(b"SPOOLQ" + struct.pack(">H", version))

    def close(self) -> None:
        self.sock.close()

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"the server closed with {self.buf!r} pending")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def preamble(self) -> tuple[bytes, int]:
        magic, version = struct.unpack(">6sH", self._read(8))
        return magic, version

    def frame(self) -> tuple[int, int, Any]:
        (length,) = struct.unpack(">I", self._read(4))
        ftype, ident = struct.unpack(">BI", self._read(5))
        return ftype, ident, cbor2.loads(self._read(length - 5))

    def send(self, ftype: int, body: Any, ident: int | None = None) -> int:
        if ident is None:
            ident, self.next_id = self.next_id, self.next_id + 1
        payload = cbor2.dumps(body)
        self.sock.sendall(struct.pack(">IBI", len(payload) + 5, ftype, ident) + payload)
        return ident

    def call(self, op: str, **fields: Any) -> Any:
        ident = self.send(REQUEST, {"op": op, **fields})
        ftype, rid, body = self.frame()
        assert rid == ident
        if ftype == ERROR:
            raise RuntimeError(body["code"], body["message"])
        assert ftype == REPLY
        return body

    def at_end(self) -> bool:
        """Whether the server ended the stream (nothing more to read)."""
        return not self.buf and self.sock.recv(1) == b""


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(":memory:") as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[SpecClient]:
    c = SpecClient(server.port)
    assert c.preamble() == (b"SPOOLQ", 2)
    yield c
    c.close()


def _records(flat: list[Any]) -> list[list[Any]]:
    assert len(flat) % 6 == 0
    return [flat[i:i + 6] for i in range(0, len(flat), 6)]


def test_the_documented_example_frame_is_answered(server: ServerProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with sock:
        sock.sendall(bytes.fromhex("53504F4F4C51 0002"
                                   "00000010 02 00000007 A1626F70667175657565 73"))
        c = SpecClient.__new__(SpecClient)
        c.sock, c.buf = sock, b""
        assert c.preamble() == (b"SPOOLQ", 2)
        assert c.frame()[:2] == (REPLY, 7)


def test_hello_reply_holds_the_documented_fields(client: SpecClient) -> None:
    reply = client.call("hello", max_reply=1024, client="spec")
    assert set(reply) == {"server", "version", "engine", "max_frame", "time"}
    assert reply["version"] == 2 and reply["max_frame"] == 16 * 1024 * 1024


def test_every_documented_op_works_as_described(client: SpecClient) -> None:
    q, owner = "spec-ops", "host:1:2:abc"
    assert client.call("append", queue=q, records=[b"a", b"bb", b"ccc"],
                       sizes=[1, 2, 3], now=1700000000.5) == [1, 2, 3]
    assert client.call("counts", queue=q) == [3, 0, 6, 6]
    peeked = _records(client.call("peek", queue=q, n=2, offset=1))
    assert [(r[0], r[1], r[2], r[3], r[5]) for r in peeked] == [
        (2, b"bb", 2, 0, None), (3, b"ccc", 3, 0, None)]
    taken = _records(client.call("take", queue=q, n=2, now=1700000001,
                                 lease=[owner, 1700000100.0]))
    assert [(r[0], r[3]) for r in taken] == [(1, 1), (2, 1)]
    assert client.call("owners", queue=q) == {owner: 2}
    records, owners, untils = client.call("peek_leased", queue=q, n=10)
    assert [r[0] for r in _records(records)] == [1, 2]
    assert owners == [owner, owner] and untils == [1700000100.0, 1700000100.0]
    assert client.call("ack", queue=q, deliveries=[[1, 1]], owner=owner) == [1]
    assert client.call("release", queue=q, deliveries=[[2, 1]], owner=owner,
                       not_before=0, max_attempts=1, reason="bad") == [2]
    dead = _records(client.call("peek", queue=q + ".dead", n=10))
    assert [(r[1], r[5]) for r in dead] == [(b"bb", "bad")]
    assert client.call("take", queue=q, n=1, now=1700000002,
                       lease=[owner, 1700000003]) != []
    assert client.call("expire", queue=q, now=1700000010) == 1
    got = _records(client.call("take", queue=q, n=5, now=1700000011))
    assert [r[0] for r in got] == [3]
    client.call("restore", queue=q, records=[3, b"ccc", 3, 1, 1700000000.5, None])
    assert client.call("move", src=q, dst=q + "-b") == 1
    (moved,) = _records(client.call("peek", queue=q + "-b", n=5))
    assert moved[1] == b"ccc"  # at the tail of dst, as a new record (of a new id)
    assert client.call("move", src=q + "-b", dst=q, ids=[moved[0]]) == 1
    assert q in client.call("queues")
    assert client.call("wait", queue=q, timeout=0.5) is True
    assert client.call("take", queue=q + "-empty", n=1, now=0, wait=0.3) == []
    assert client.call("purge", queue=q) == 1
    assert client.call("set_meta", key="k", value=b"v") is None
    assert client.call("get_meta", key="k") == b"v"
    assert client.call("get_meta", key="missing") is None
    assert client.call("bye") is None


def test_a_bad_request_is_answered_and_the_connection_stays_open(client: SpecClient) -> None:
    with pytest.raises(RuntimeError) as info:
        client.call("no-such-op")
    assert info.value.args[0] == 10
    with pytest.raises(RuntimeError) as info:
        client.call("take", queue="q", n=1.0, now=0)  # a float where a uint goes
    assert info.value.args[0] == 10
    assert client.call("queues") is not None


@pytest.mark.parametrize("frame", [
    struct.pack(">IBI", 6, REQUEST, 0) + b"\xa0",  # id 0 is reserved
    struct.pack(">IBI", 6, REPLY, 5) + b"\xa0",  # a type the server does not take
    struct.pack(">IBI", 7, REQUEST, 5) + b"\xa0\x00",  # bytes after the item
    struct.pack(">IBI", 8, REQUEST, 5) + b"\xc1\xa1\x00\x00",  # a tag
])
def test_protocol_errors_are_code_1_and_close(client: SpecClient, frame: bytes) -> None:
    client.sock.sendall(frame)
    ftype, _, body = client.frame()
    assert ftype == ERROR and body["code"] == 1 and isinstance(body["message"], str)
    assert client.at_end()


def test_a_frame_above_max_frame_is_refused_from_its_header(client: SpecClient) -> None:
    client.sock.sendall(struct.pack(">IBI", 16 * 1024 * 1024 + 1, REQUEST, 9))
    ftype, ident, body = client.frame()
    assert (ftype, ident, body["code"]) == (ERROR, 0, 2)
    assert client.at_end()


def test_bad_magic_gets_an_error_instead_of_a_preamble(server: ServerProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with sock:
        sock.sendall(b"NOTSPQ\x00\x02")
        c = SpecClient.__new__(SpecClient)
        c.sock, c.buf = sock, b""
        ftype, ident, body = c.frame()
        assert (ftype, ident, body["code"]) == (ERROR, 0, 1)
        assert c.at_end()


def test_version_negotiation(server: ServerProcess) -> None:
    newer = SpecClient(server.port, version=9)
    with newer.sock:
        assert newer.preamble() == (b"SPOOLQ", 2)
        assert newer.call("queues") is not None
    older = SpecClient(server.port, version=1)
    with older.sock:
        assert older.preamble() == (b"SPOOLQ", 1)
        ftype, ident, body = older.frame()
        assert (ftype, ident, body["code"]) == (ERROR, 0, 3)
        assert older.at_end()


def test_pipelined_requests_are_each_answered_once_by_id(client: SpecClient) -> None:
    payloads = b""
    for ident in range(100, 110):
        body = cbor2.dumps({"op": "counts", "queue": f"pipe{ident}"})
        payloads += struct.pack(">IBI", len(body) + 5, REQUEST, ident) + body
    client.sock.sendall(payloads)
    answers = [client.frame() for _ in range(10)]
    assert sorted(ident for _, ident, _ in answers) == list(range(100, 110))
    assert {ftype for ftype, _, _ in answers} == {REPLY}


def test_a_token_is_sent_in_an_auth_frame_first(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret")
    with ServerProcess(":memory:", "--token-file", str(token)) as srv:
        good = SpecClient(srv.port)
        with good.sock:
            ident = good.send(AUTH, {"token": "s3cret"})
            assert good.preamble() == (b"SPOOLQ", 2)
            assert good.frame() == (REPLY, ident, None)
            assert good.call("queues") == []
        early = SpecClient(srv.port)
        with early.sock:
            early.send(REQUEST, {"op": "queues"}, ident=3)
            assert early.preamble() == (b"SPOOLQ", 2)
            ftype, ident, body = early.frame()
            assert (ftype, ident, body["code"]) == (ERROR, 3, 4)
            assert early.at_end()
        wrong = SpecClient(srv.port)
        with wrong.sock:
            wrong.send(AUTH, {"token": "nope"}, ident=4)
            wrong.preamble()
            ftype, ident, body = wrong.frame()
            assert (ftype, ident, body["code"]) == (ERROR, 4, 4)
            assert wrong.at_end()


def test_a_restore_the_engine_refuses_is_a_value_error(client: SpecClient) -> None:
    q = "spec-restore"
    (held,) = client.call("append", queue=q, records=[b"a"], sizes=[1], now=0)
    for records, code in [([held, b"a", 1, 0, 0, None], 11),  # the queue holds that id
                          ([held + 99, b"a", 1, 0, 0, None], 11),  # one it never gave out
                          ([held, b"a", -1, 0, 0, None], 10)]:  # a size is never negative
        with pytest.raises(RuntimeError) as info:
            client.call("restore", queue=q, records=records)
        assert info.value.args[0] == code


def test_a_frame_of_exactly_max_frame_is_read_and_one_byte_more_refused() -> None:
    with ServerProcess(":memory:", "--max-frame", "4096") as srv:
        for extra, answer in [(0, REPLY), (1, ERROR)]:
            c = SpecClient(srv.port)
            with c.sock:
                assert c.preamble() == (b"SPOOLQ", 2)
                body = {"op": "queues", "pad": ""}
                pad = 4096 - 5 - len(cbor2.dumps(body)) - 2 + extra  # a text of 256+ bytes
                payload = cbor2.dumps({"op": "queues", "pad": "x" * pad})
                assert len(payload) + 5 == 4096 + extra
                c.sock.sendall(struct.pack(">IBI", len(payload) + 5, REQUEST, 1) + payload)
                ftype, ident, reply = c.frame()
                assert ftype == answer
                if answer == ERROR:
                    assert (ident, reply["code"]) == (0, 2)
                    assert c.at_end()


def test_a_restored_record_goes_back_to_its_place_by_id(client: SpecClient) -> None:
    """Behind a record of a smaller id that came back after the take (a released lease),
    ahead of those appended after it."""
    q, owner = "spec-restore-place", "host:1:2:abc"
    client.call("append", queue=q, records=[b"a", b"b", b"c"], sizes=[1, 1, 1], now=1)
    leased = client.call("take", queue=q, n=1, now=2, lease=[owner, 100.0])
    taken = client.call("take", queue=q, n=1, now=2)
    client.call("release", queue=q, deliveries=[[leased[0], leased[3]]], owner=owner,
                not_before=0, count_attempt=False)
    client.call("restore", queue=q, records=taken)
    assert [r[1] for r in _records(client.call("peek", queue=q, n=5))] == [b"a", b"b", b"c"]
