"""What long-lived connections cost the server and the client: memory, leases, sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest

import spoolq
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


# ---- the client's long-poll connections --------------------------------------------------


def _sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def test_many_blocked_async_gets_share_their_long_poll(tmp_path: Path) -> None:
    """200 tasks blocked in ``get`` on one queue wait through a connection or two, not
    one each (which cost a socket each on both sides, and the server a look at the
    queue for each every 0.2 s); an item put meanwhile still reaches one of them."""
    log = tmp_path / "server.log"
    with ServerProcess(":memory:", log_file=log) as srv:

        async def main() -> tuple[int, int, list[Any]]:
            async with await spoolq.Queue.create(f"{srv.url}/jobs") as q, \
                    await spoolq.Queue.create(f"{srv.url}/jobs") as producer:
                getters = [asyncio.ensure_future(q.get()) for _ in range(200)]
                await asyncio.sleep(1.0)
                before = _connections(log)
                sockets = _sockets()
                await asyncio.sleep(6.0)  # past one long-poll round
                opened = _connections(log) - before
                await producer.put("one")
                done, _ = await asyncio.wait(getters, timeout=3,
                                             return_when=asyncio.FIRST_COMPLETED)
                got = [t.result() for t in done]
                for t in getters:
                    t.cancel()
                await asyncio.gather(*getters, return_exceptions=True)
                return sockets, opened, got

        sockets, opened, got = asyncio.run(main())
    assert got == ["one"]
    assert opened < 10, f"{opened} connections opened in 6 s by 200 blocked gets"
    assert sockets < 20, f"{sockets} sockets open for 200 blocked gets"
    # each waiting connection costs the server a look at the queue every 0.2 s
    (line,) = [ln for ln in log.read_text().splitlines() if "server stopped" in ln]
    transactions = int(line.split("; ")[1].split()[0])
    assert transactions < 1500, f"{transactions} engine transactions for 200 idle gets"


def _connections(log: Path) -> int:
    return log.read_text().count("spoolq: connection from")


def test_threads_sharing_a_wait_keep_their_own_timeouts_and_cancels(tmp_path: Path) -> None:
    """Threads waiting on one queue share a wait, yet each keeps its own timeout and
    cancel: the first thread (whose wait the others joined) cancelled, and another one
    timed out, the rest still wait, and records appended wake them all."""
    from concurrent.futures import ThreadPoolExecutor

    from spoolq.engines.base import WaitCancel
    from spoolq.engines.remote import RemoteEngine

    with ServerProcess(":memory:") as srv:
        engine = RemoteEngine(f"{srv.url}/q")
        try:
            with ThreadPoolExecutor(8) as pool:
                first_cancel = WaitCancel()
                first = pool.submit(engine.wait_ready, "q", 30, first_cancel)
                time.sleep(0.3)
                short = pool.submit(engine.wait_ready, "q", 1.0)
                rest = [pool.submit(engine.wait_ready, "q", 30) for _ in range(5)]
                time.sleep(0.3)
                started = time.monotonic()
                first_cancel.cancel()
                assert first.result(5) is False
                assert time.monotonic() - started < 1
                assert short.result(5) is False
                assert time.monotonic() - started < 2
                assert not any(f.done() for f in rest)
                engine.append("q", [b"x"], [1], time.time())
                assert [f.result(5) for f in rest] == [True] * 5
        finally:
            engine.close()


# ---- a take that ends after the shutdown gave up on it ------------------------------------


def test_a_take_ending_after_the_grace_period_gives_its_records_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A get still running on the engine when the shutdown's grace period ran out ends
    after the server told its engine thread to stop, on a connection already closed: the
    records it removed go back to the queue before the file is closed, not lost."""
    import threading

    import spoolq.server
    from spoolq.engines import open_engine
    from spoolq.engines.sqlite import SQLiteEngine

    from .servers import ThreadedServer

    entered, release = threading.Event(), threading.Event()

    class SlowTakes(SQLiteEngine):
        def take(self, *args: Any, **kwargs: Any) -> Any:
            entered.set()
            assert release.wait(20)
            return super().take(*args, **kwargs)

    monkeypatch.setattr(spoolq.server, "_SHUTDOWN_GRACE", 0.5)
    path = tmp_path / "q.sqlite"
    check = open_engine(str(path))
    check.append("q", [b"kept"], [4], time.time())
    check.close()
    srv = ThreadedServer(str(path), engine=SlowTakes(path))
    conn = Raw(srv.url)
    try:
        conn.sock.sendall(request_frame(99, "take", queue="q", n=1, now=time.time(),
                                        lease=None))
        assert entered.wait(5)
        assert srv.server is not None
        srv.loop.call_soon_threadsafe(srv.server.close)
        wait_until(lambda: not srv.server.connections, within=5)  # type: ignore[union-attr]
        time.sleep(0.5)
        release.set()
        srv.stop()
        assert not srv._thread.is_alive()
    finally:
        release.set()
        conn.close()
        srv.stop()
    check = open_engine(str(path))
    try:
        assert [r.data for r in check.peek("q", 10)] == [b"kept"]
    finally:
        check.close()


def test_the_memory_an_append_holds_is_worked_out_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a request's records hold (request_cost, a pass over every record) is worked
    out once per request: it was worked out up to three times per append."""
    import spoolq._inflight
    import spoolq.session
    from spoolq.engines.remote import RemoteEngine

    from .servers import ThreadedServer

    calls: list[str] = []
    cost = spoolq._inflight.request_cost

    def counted(req: Any) -> int:
        calls.append(req.op)
        return cost(req)

    monkeypatch.setattr(spoolq._inflight, "request_cost", counted)
    monkeypatch.setattr(spoolq.session, "request_cost", counted)
    with ThreadedServer(str(tmp_path / "q.sqlite")) as srv:
        eng = RemoteEngine(srv.url)
        try:
            eng.append("q", [b"x" * 10] * 100, [10] * 100, time.time())
            eng.append("q", [b"y"], [1], time.time())
        finally:
            eng.close()
    assert calls.count("append") == 2
