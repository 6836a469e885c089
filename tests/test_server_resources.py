"""What long-lived connections cost the server and the client: memory, leases, sockets."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest

from spoolq.protocol import PREAMBLE, FrameType, encode_preamble

from .servers import ServerProcess, request_frame, wait_until


class Raw:
    """A connection speaking the wire protocol by hand, one request at a time."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("spoolq://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), 10)
        self.sock.sendall(encode_preamble())
        self._buf = b""
        self._id = 0
        while len(self._buf) < PREAMBLE.size:  # the server's preamble
            self._buf += self.sock.recv(PREAMBLE.size - len(self._buf))
        self._buf = b""

    def call(self, op: str, **fields: Any) -> Any:
        self._id += 1
        self.sock.sendall(request_frame(self._id, op, **fields))
        while True:
            if len(self._buf) >= 4:
                length = struct.unpack_from(">I", self._buf)[0]
                if len(self._buf) >= 4 + length:
                    ftype, ident = struct.unpack_from(">BI", self._buf, 4)
                    body = cbor2.loads(self._buf[9:4 + length])
                    self._buf = self._buf[4 + length:]
                    assert ident == self._id
                    assert ftype == FrameType.REPLY, body
                    return body
            chunk = self.sock.recv(1 << 20)
            assert chunk, "the server closed the connection"
            self._buf += chunk

    def close(self) -> None:
        self.sock.close()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _deliveries(records: list[Any]) -> list[list[int]]:
    return [[i, a] for i, a in zip(records[0::6], records[3::6], strict=True)]


def _counts(conn: Raw, queue: str) -> tuple[int, int]:
    ready, leased, _, _ = conn.call("counts", queue=queue)
    return ready, leased


# ---- the deliveries a connection remembers --------------------------------------------


@pytest.mark.parametrize("how", ["acked elsewhere", "expired and taken elsewhere"])
def test_a_long_lived_consumer_connection_does_not_grow(tmp_path: Path, how: str) -> None:
    """A connection that leases records others then settle (an ack on another connection
    of the same owner, or a lease that ran out and went to another client) keeps no
    memory for them: the server's memory stays flat over many rounds."""
    batch, rounds = 2000, 120
    with ServerProcess(":memory:") as srv:
        consumer, other = Raw(srv.url), Raw(srv.url)
        try:
            def one_round() -> None:
                now = time.time()
                other.call("append", queue="q", records=[b"x"] * batch, sizes=[1] * batch,
                           now=now)
                until = now + 600 if how == "acked elsewhere" else now - 1
                got = consumer.call("take", queue="q", n=batch, now=now,
                                    lease=["c", until])
                assert len(got) == 6 * batch
                if how == "acked elsewhere":
                    done = other.call("ack", queue="q", deliveries=_deliveries(got),
                                      owner="c")
                else:
                    assert other.call("expire", queue="q", now=now) == batch
                    again = other.call("take", queue="q", n=batch, now=now,
                                       lease=["d", now + 600])
                    done = other.call("ack", queue="q", deliveries=_deliveries(again),
                                      owner="d")
                assert len(done) == batch

            for _ in range(20):
                one_round()
            before = _rss_kib(srv.proc.pid)
            for _ in range(rounds - 20):
                one_round()
            grown = _rss_kib(srv.proc.pid) - before
            assert _counts(other, "q") == (0, 0)
            assert grown < 8 * 1024, \
                f"the server grew {grown} KiB over {(rounds - 20) * batch} settled deliveries"
        finally:
            consumer.close()
            other.close()


def test_a_dropped_connection_still_releases_what_it_holds(tmp_path: Path) -> None:
    """Of the deliveries of a connection, those settled elsewhere are left alone when it
    drops, and those it still holds go back at once (a plain get of a record that had
    been leased before, and a record leased again on the same connection, included)."""
    with ServerProcess(":memory:") as srv:
        consumer, other = Raw(srv.url), Raw(srv.url)
        try:
            now = time.time()
            other.call("append", queue="q", records=[b"a", b"b", b"c", b"d"],
                       sizes=[1] * 4, now=now)
            got = consumer.call("take", queue="q", n=4, now=now, lease=["c", now + 600])
            first, _second, third, fourth = _deliveries(got)
            assert other.call("ack", queue="q", deliveries=[first], owner="c") == [first[0]]
            # the third is released elsewhere and comes back to this connection
            assert other.call("release", queue="q", deliveries=[third], owner="c",
                              not_before=0.0, count_attempt=False) == [third[0]]
            (again,) = _deliveries(consumer.call("take", queue="q", n=1, now=now,
                                                 lease=["c", now + 600]))
            assert again[0] == third[0]
            # the fourth is released and taken for good by another client
            assert other.call("release", queue="q", deliveries=[fourth], owner="c",
                              not_before=0.0, count_attempt=False) == [fourth[0]]
            assert len(other.call("take", queue="q", n=1, now=now, lease=None)) == 6
            assert _counts(other, "q") == (0, 2)
        finally:
            consumer.close()
        wait_until(lambda: _counts(other, "q") == (2, 0))
        recs = other.call("take", queue="q", n=10, now=time.time(), lease=None)
        assert sorted(recs[1::6]) == [b"b", b"c"]
        other.close()


# ---- leases taken after a goodbye --------------------------------------------------------


def test_leases_taken_after_bye_go_back_when_the_connection_drops(tmp_path: Path) -> None:
    """A ``bye`` keeps the leases delivered before it; a lease taken on the same
    connection after it is released at once when the connection then drops."""
    with ServerProcess(":memory:") as srv:
        client, other = Raw(srv.url), Raw(srv.url)
        try:
            now = time.time()
            other.call("append", queue="q", records=[b"before", b"after"], sizes=[6, 5],
                       now=now)
            kept = client.call("take", queue="q", n=1, now=now, lease=["c", now + 600])
            assert kept[1] == b"before"
            assert client.call("bye") is None
            late = client.call("take", queue="q", n=1, now=now, lease=["c", now + 600])
            assert late[1] == b"after"
        finally:
            client.close()
        wait_until(lambda: _counts(other, "q") == (1, 1))
        (rec,) = [other.call("take", queue="q", n=1, now=time.time(), lease=None)]
        assert (rec[1], rec[3]) == (b"after", 1)
        other.close()
