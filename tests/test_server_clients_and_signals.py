"""The server's connections against clients that disconnect, stall, pipeline or misbehave
at awkward moments, and against signals that stop it while clients wait or write."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import spoolq
import spoolq.server
from spoolq.engines import Lease, open_engine
from spoolq.engines.remote import RemoteEngine
from spoolq.protocol import ErrorCode, encode_preamble

from .servers import ThreadedServer, reply_frames, request_frame, wait_until


class _GatedAppend:
    """The memory engine run on the engine thread, whose appends to queue "gated" wait
    for ``gate`` (``entered`` says the first began)."""

    inline = False

    def __init__(self) -> None:
        self._inner = open_engine(":memory:")
        self.name = self._inner.name
        self.gate = threading.Event()
        self.entered = threading.Event()

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        if queue == "gated":
            self.entered.set()
            self.gate.wait(10)
        return self._inner.append(queue, records, raw_sizes, now)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("spoolq://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


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


def test_pipelined_large_appends_held_in_flight_stay_bounded() -> None:
    """A client pipelines large appends faster than the engine writes them. The server
    stops reading once the requests in flight of that connection hold 64 MiB of records
    (it read up to 256 of them, 4 GiB at 16 MiB each); every append still runs and is
    answered once the engine catches up."""
    engine = _GatedAppend()
    record = b"r" * (1 << 20)
    count = 150
    with ThreadedServer(":memory:", engine=engine, max_frame=2 << 20) as srv:
        sock = _connect(srv.url)
        try:
            sock.sendall(encode_preamble() + request_frame(
                1, "append", queue="gated", records=[record], sizes=[len(record)], now=1.0))
            assert engine.entered.wait(5)
            frame = request_frame(2, "append", queue="gated", records=[record],
                                  sizes=[len(record)], now=1.0)
            sock.settimeout(1.0)
            sent = 0
            with contextlib.suppress(TimeoutError):
                for _ in range(count - 1):
                    sock.sendall(frame)
                    sent += 1
            assert sent < 100, f"the server read {sent} MiB of appends it could not run yet"
            engine.gate.set()
            sock.settimeout(10)
            sock.sendall(frame * (count - 1 - sent))
            data = b""
            while len(reply_frames(data[8:])) < count:
                chunk = sock.recv(1 << 16)
                assert chunk, "the server closed the connection"
                data += chunk
            assert all(ftype == 3 for ftype, _, _ in reply_frames(data[8:]))
        finally:
            engine.gate.set()
            sock.close()
        assert engine.counts("gated")[0] == count


class _FailingSecondTake:
    """An SQLite engine whose takes fail, as a lock another process holds makes them fail,
    from the ``fail_from``-th on (counted from 1; 0: none fail)."""

    def __init__(self, path: Path) -> None:
        self._inner = open_engine(path)
        self.name = self._inner.name
        self.takes = 0
        self.fail_from = 0

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> Any:
        self.takes += 1
        if self.fail_from and self.takes >= self.fail_from:
            raise spoolq.LockTimeout("database is locked")
        return self._inner.take(queue, n, now, lease)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


@pytest.mark.parametrize("leased", [False, True])
def test_a_take_read_in_chunks_whose_later_chunk_fails_takes_nothing(
        tmp_path: Path, leased: bool) -> None:
    """A take of many records reads them in chunks, each its own engine call. When a
    later chunk fails, the client gets the error and the records of the earlier chunks
    go back: a get whose chunks failed half-way removed them for good."""
    engine = _FailingSecondTake(tmp_path / "q.sqlite")
    engine.append("jobs", [b"L" * 4000], [4000], 1.0)
    engine.take("jobs", 1, 1.0, Lease("other", 1e12))  # a large record, leased elsewhere
    engine.append("jobs", [b"small %d" % i for i in range(3)], [7] * 3, 1.0)
    engine.fail_from = engine.takes + 2  # the second chunk of the next take fails
    with ThreadedServer(":memory:", engine=engine) as srv:
        sock = _connect(srv.url)
        try:
            now = time.time()
            sock.sendall(encode_preamble() + request_frame(1, "hello", max_reply=1024)
                         + request_frame(2, "take", queue="jobs", n=10, now=now,
                                         lease=["me", now + 600] if leased else None))
            data = b""
            while len(reply_frames(data[8:])) < 2:
                chunk = sock.recv(1 << 16)
                assert chunk, "the server closed the connection"
                data += chunk
            (_, _, _), (ftype, ident, body) = reply_frames(data[8:])
            assert (ftype, ident, body["code"]) == (4, 2, ErrorCode.LOCK_TIMEOUT)
        finally:
            sock.close()
        assert engine.takes == engine.fail_from, "the take was not read in two chunks"
        engine.fail_from = 0
        assert tuple(engine.counts("jobs"))[:2] == (3, 1)
        assert [(r.data, r.attempts) for r in engine.peek("jobs", 10)] == [
            (b"small %d" % i, 0) for i in range(3)]


@pytest.mark.parametrize("path", [":memory:", "q.sqlite"])
def test_a_connection_reset_with_pipelined_leases_in_every_state_gives_each_back_once(
        tmp_path: Path, path: str) -> None:
    """A client pipelines more lease takes than MAX_INFLIGHT, reads some replies and
    resets the connection: the records it read, those whose replies it did not read,
    those of takes still running and those never read by the server all end up ready,
    each released at most once (attempts 0 or 1)."""
    with ThreadedServer(path if path == ":memory:" else str(tmp_path / path)) as srv:
        client = RemoteEngine(srv.url)
        try:
            client.append("m", [b"x"] * 600, [1] * 600, time.time())
            sock = _connect(srv.url)
            now = time.time()
            sock.sendall(encode_preamble() + b"".join(
                request_frame(i, "take", queue="m", n=1, now=now, lease=["me", now + 600])
                for i in range(1, 601)))
            data = b""
            while len(reply_frames(data[8:])) < 100:
                chunk = sock.recv(4096)
                assert chunk, "the server closed the connection"
                data += chunk
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            wait_until(lambda: tuple(client.counts("m"))[:2] == (600, 0), within=10)
            attempts = [r.attempts for r in client.peek("m", 1000)]
        finally:
            client.close()
        assert len(attempts) == 600 and set(attempts) <= {0, 1}


class _FailingGiveBack:
    """An SQLite engine whose restores and releases fail once ``failing`` is set, as a
    lock another process holds makes them fail."""

    def __init__(self, path: Path) -> None:
        self._inner = open_engine(path)
        self.name = self._inner.name
        self.failing = False

    def restore(self, queue: str, records: Any) -> None:
        if self.failing:
            raise spoolq.LockTimeout("database is locked")
        self._inner.restore(queue, records)

    def release(self, queue: str, deliveries: Any, owner: str, **options: Any) -> list[int]:
        if self.failing:
            raise spoolq.LockTimeout("database is locked")
        return self._inner.release(queue, deliveries, owner, **options)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


@pytest.mark.parametrize("leased", [False, True])
def test_a_take_whose_surplus_cannot_go_back_still_answers_with_what_it_took(
        tmp_path: Path, leased: bool) -> None:
    """A take reads more records than its reply holds and gives the rest back. When that
    give-back fails, the records that fit are still sent: the take had removed (or
    leased) them, and an error reply lost them for good (a get) or left them held,
    unknown to the client, until their lease ran out."""
    engine = _FailingGiveBack(tmp_path / "q.sqlite")
    engine.append("jobs", [b"%d" % i * 400 for i in range(3)], [400] * 3, 1.0)
    engine.failing = True
    with ThreadedServer(":memory:", engine=engine) as srv:
        sock = _connect(srv.url)
        try:
            now = time.time()
            sock.sendall(encode_preamble() + request_frame(1, "hello", max_reply=1024)
                         + request_frame(2, "take", queue="jobs", n=10, now=now,
                                         lease=["me", now + 600] if leased else None))
            data = b""
            while len(reply_frames(data[8:])) < 2:
                chunk = sock.recv(1 << 16)
                assert chunk, "the server closed the connection"
                data += chunk
            (_, _, _), (ftype, ident, body) = reply_frames(data[8:])
            assert (ftype, ident) == (3, 2), body
            assert body[1::6] == [b"0" * 400, b"1" * 400]
        finally:
            sock.close()


def test_a_slow_reader_is_cut_off_when_the_shutdown_grace_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client reads its replies, but slowly: it never stalls for a second, so the
    shutdown does not cut it off early. When the grace period ends the server cuts it off
    like a client that does not read (its unsent replies lost, its lease back) before it
    ends; it left the connection open, with its lease kept, past the server's end (and on
    Python 3.12, whose Server.wait_closed() waits for every connection, the shutdown
    waited for the slow reader to read everything)."""
    monkeypatch.setattr(spoolq.server, "_SHUTDOWN_GRACE", 2.0)
    path = tmp_path / "q.sqlite"
    eng = open_engine(path)
    big = b"b" * (1 << 20)
    eng.append("big", [big], [len(big)], 1.0)
    eng.append("jobs", [b"job"], [3], 1.0)
    eng.close()
    srv = ThreadedServer(str(path))
    host, port = srv.url.removeprefix("spoolq://").rsplit(":", 1)
    sock = socket.socket()
    reading = threading.Event()
    reading.set()

    def read_slowly() -> None:
        with contextlib.suppress(OSError):
            while reading.is_set() and sock.recv(2048):
                time.sleep(0.05)

    reader = threading.Thread(target=read_slowly)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        sock.connect((host, int(port)))
        now = time.time()
        sock.sendall(encode_preamble() + request_frame(
            1, "take", queue="jobs", n=1, now=now, lease=["slow", now + 600]) + b"".join(
            request_frame(i, "peek", queue="big", n=1) for i in range(2, 22)))
        reader.start()
        time.sleep(0.3)
        srv.stop()
        assert srv.server is not None and not srv.server.connections
    finally:
        reading.clear()
        if reader.is_alive():
            reader.join(10)
        sock.close()
        srv.stop()
    check = open_engine(path)
    try:
        assert tuple(check.counts("jobs"))[:2] == (1, 0), "the slow reader's lease stayed"
    finally:
        check.close()


def test_a_reply_written_as_the_grace_ends_still_reaches_a_client_that_reads_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A get that ran until just before the shutdown's grace period ended leaves its
    client a few seconds to read its large reply while it keeps reading; it was cut off at
    once, its records removed and never received."""
    from spoolq.engines.sqlite import SQLiteEngine
    from spoolq.protocol import PREAMBLE

    entered, release = threading.Event(), threading.Event()

    class SlowTakes(SQLiteEngine):
        def take(self, *args: Any, **kwargs: Any) -> Any:
            entered.set()
            assert release.wait(20)
            return super().take(*args, **kwargs)

    monkeypatch.setattr(spoolq.server, "_SHUTDOWN_GRACE", 1.8)
    path = tmp_path / "q.sqlite"
    eng = open_engine(path)
    big = [b"%02d" % k + b"b" * (1 << 20) for k in range(8)]
    eng.append("q", big, [len(b) for b in big], 1.0)
    eng.append("q", [b"after"], [5], 1.0)
    eng.close()
    srv = ThreadedServer(str(path), engine=SlowTakes(path))
    host, port = srv.url.removeprefix("spoolq://").rsplit(":", 1)
    sock = socket.socket()
    got = bytearray()

    def read_steadily() -> None:
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                got.extend(chunk)
                time.sleep(0.012)  # some 3-5 MB/s: 8 MiB take longer than the grace left

    reader = threading.Thread(target=read_steadily)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.settimeout(10)
        sock.connect((host, int(port)))
        sock.sendall(encode_preamble() + request_frame(
            1, "take", queue="q", n=8, now=time.time(), lease=None))
        reader.start()
        assert entered.wait(5)
        assert srv.server is not None
        srv.loop.call_soon_threadsafe(srv.server.close)
        time.sleep(0.6)
        release.set()  # answered about 1 s (less on a loaded machine) before the grace ends
        srv.stop()
        reader.join(20)
    finally:
        release.set()
        sock.close()
        srv.stop()
    frames = reply_frames(bytes(got[PREAMBLE.size:]))
    assert len(frames) == 1, "the reply did not arrive whole"
    records = frames[0][2]
    assert [records[k][:2] for k in range(1, len(records), 6)] == [b"%02d" % k for k in range(8)]
    check = open_engine(path)
    try:
        assert [r.data for r in check.peek("q", 10)] == [b"after"]
    finally:
        check.close()
