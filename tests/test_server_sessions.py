"""Server sessions over real sockets: whose leases a dropped connection gives back, signal
handlers of serve() and main(), long-polls, deadlines, frame limits, shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

import spoolq
from spoolq.engines import Lease, open_engine
from spoolq.engines.remote import RemoteEngine
from spoolq.protocol import (
    RECORD_FIELDS,
    ErrorCode,
    FrameType,
    encode_frame,
    encode_preamble,
    encode_reply,
)

from .servers import SRC, ThreadedServer


@pytest.fixture(params=["memory", "sqlite"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ThreadedServer]:
    """A server in this process: the memory engine (called on the event loop) or SQLite
    (called on the engine thread)."""
    path = ":memory:" if request.param == "memory" else str(tmp_path / "q.sqlite")
    with ThreadedServer(path, stall_timeout=0.5) as srv:
        yield srv


def _until(condition: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.01)


class Raw:
    """A client speaking the protocol over a plain socket, one frame at a time."""

    def __init__(self, url: str, *, handshake: bool = True) -> None:
        host, port = url.removeprefix("spoolq://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.buf = b""
        self.next_id = 1
        if handshake:
            self.sock.sendall(encode_preamble())
            assert self._read(8) == encode_preamble()

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, op: str, **fields: Any) -> int:
        ident = self.next_id
        self.next_id += 1
        self.sock.sendall(encode_frame(FrameType.REQUEST, ident, {"op": op, **fields}))
        return ident

    def frame(self) -> tuple[int, int, Any]:
        """The next frame: (type, id, body)."""
        length, ftype, ident = struct.unpack(">IBI", self._read(9))
        return ftype, ident, cbor2.loads(self._read(length - 5))

    def call(self, op: str, **fields: Any) -> Any:
        ident = self.send(op, **fields)
        ftype, got, body = self.frame()
        assert got == ident
        if ftype == FrameType.ERROR:
            raise RuntimeError(f"{body['code']}: {body['message']}")
        return body

    def lease(self, queue: str, owner: str, n: int = 1, **fields: Any) -> list[tuple[int, int,
                                                                                     bytes]]:
        """(id, attempts, data) of the records taken under a 600 s lease of ``owner``."""
        now = time.time()
        flat = self.call("take", queue=queue, n=n, now=now, lease=[owner, now + 600], **fields)
        return [(flat[i], flat[i + 3], flat[i + 1]) for i in range(0, len(flat), RECORD_FIELDS)]

    def close(self) -> None:
        self.sock.close()

    def closed_by_server(self, within: float = 5.0) -> bytes:
        """Everything the server sends until it closes the connection."""
        self.sock.settimeout(within)
        data = self.buf
        while chunk := self.sock.recv(65536):
            data += chunk
        return data


def _data(records: list[Any]) -> list[bytes]:
    return [r.data for r in records]


# ---- leases of a dropped connection -----------------------------------------------------


def test_a_dropped_connection_releases_its_own_deliveries_not_those_of_its_owner_elsewhere(
        served: ThreadedServer) -> None:
    """The remote engine reconnects after a dropped link under the same owner: the leases
    it takes on its new connection are not released with those of the old one."""
    eng = RemoteEngine(served.url)
    old, new = Raw(served.url), Raw(served.url)
    try:
        eng.append("q", [b"first", b"second", b"third"], [5, 6, 5], time.time())
        ((_, _, on_old),) = old.lease("q", "worker")
        ((second, attempts, on_new),) = new.lease("q", "worker")
        assert (on_old, on_new) == (b"first", b"second")
        old.close()  # no goodbye: its leases go back at once
        _until(lambda: eng.counts("q").leased < 2)
        now = time.time()
        got = eng.take("q", 10, now, Lease("other", now + 600))
        assert _data(got) == [b"first", b"third"], "a lease of the live connection was released"
        assert got[0].attempts == 2
        assert eng.counts("q").leased == 3
        assert new.call("ack", queue="q", owner="worker", deliveries=[[second, attempts]]) \
            == [second]
    finally:
        old.close()
        new.close()
        eng.close()


def test_a_release_undone_and_leased_again_elsewhere_is_not_given_back_with_the_first(
        served: ThreadedServer) -> None:
    """A delivery its connection gave back uncounted (attempts drop by one) and the same
    owner leased again on another connection has the same id and attempts: the first
    connection's end must not release it, since its client settled it there."""
    eng = RemoteEngine(served.url)
    old, new = Raw(served.url), Raw(served.url)
    try:
        eng.append("q", [b"job"], [3], time.time())
        ((ident, attempts, _),) = old.lease("q", "worker")
        assert old.call("release", queue="q", owner="worker", deliveries=[[ident, attempts]],
                        not_before=0.0, count_attempt=False) == [ident]
        assert new.lease("q", "worker") == [(ident, attempts, b"job")]
        old.close()
        time.sleep(0.3)  # the server has seen the end of the first connection
        assert eng.counts("q").leased == 1
        assert new.call("ack", queue="q", owner="worker", deliveries=[[ident, attempts]]) \
            == [ident]
    finally:
        old.close()
        new.close()
        eng.close()


def test_a_delivery_given_back_at_its_last_attempt_is_a_dead_letter(
        served: ThreadedServer) -> None:
    eng = RemoteEngine(served.url)
    client = Raw(served.url)
    try:
        eng.append("q", [b"poison", b"fine"], [6, 4], time.time())
        assert [d for _, _, d in client.lease("q", "w", n=1, max_attempts=1)] == [b"poison"]
        assert [d for _, _, d in client.lease("q", "w", n=1, max_attempts=3)] == [b"fine"]
        client.close()
        _until(lambda: eng.counts("q").leased == 0)
        assert _data(eng.take("q", 5, time.time(), None)) == [b"fine"]
        (dead,) = eng.take("q.dead", 5, time.time(), None)
        assert (dead.data, dead.reason) == (b"poison", "owner died")
    finally:
        client.close()
        eng.close()


# ---- signal handlers of serve() and main() ----------------------------------------------


_SERVE = textwrap.dedent("""\
    import os, signal, sys
    from spoolq.server import run, serve

    got = []
    signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    sigint = signal.getsignal(signal.SIGINT)

    def listening(server):
        os.kill(os.getpid(), signal.SIGTERM)  # serve()'s handler: a clean shutdown

    run(serve(":memory:", port=0, on_listening=listening), loop=sys.argv[1])
    print("served", got, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    print("after", got, signal.getsignal(signal.SIGINT) is sigint, flush=True)
""")

_SERVE_IN_A_LOOP_WITH_HANDLERS = textwrap.dedent("""\
    import asyncio, os, signal, sys
    from spoolq.server import run, serve

    async def main():
        loop = asyncio.get_running_loop()
        got = []
        loop.add_signal_handler(signal.SIGTERM, got.append, "program's")
        await serve(":memory:", port=0,
                    on_listening=lambda server: os.kill(os.getpid(), signal.SIGTERM))
        got.clear()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.5)
        print("after", got, flush=True)

    run(main(), loop=sys.argv[1])
""")

_SIGNAL_ON_ANOTHER_THREAD = textwrap.dedent("""\
    import signal, sys, threading, time
    from spoolq.server import run, serve

    def listening(server):
        def later():
            time.sleep(0.2)
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # not the main one
            time.sleep(30)
        threading.Thread(target=later, daemon=True).start()

    started = time.monotonic()
    run(serve(sys.argv[2], port=0, on_listening=listening), loop=sys.argv[1])
    print("stopped", time.monotonic() - started < 5, signal.set_wakeup_fd(-1), flush=True)
""")

_MAIN = textwrap.dedent("""\
    import os, signal, sys, time
    from spoolq.server import main

    got = []
    if sys.argv[1] == "own":
        signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    status = main([":memory:", "--port", "0", "--log-level", "WARNING",
                   "--loop", sys.argv[2]])
    print("returned", status, got, flush=True)
    print("sigint", signal.getsignal(signal.SIGINT) is signal.default_int_handler,
          flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)
    print("after", got, flush=True)
""")


def _script(tmp_path: Path, text: str, *args: str) -> subprocess.Popen[str]:
    script = tmp_path / "embed.py"
    script.write_text(text)
    return subprocess.Popen([sys.executable, os.fspath(script), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": SRC})


def _loop(name: str) -> str:
    if name == "uvloop":
        pytest.importorskip("uvloop")
    return name


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_serve_puts_back_the_signal_handlers_it_found(tmp_path: Path, loop: str) -> None:
    proc = _script(tmp_path, _SERVE, _loop(loop))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.splitlines() == ["served []", "after [15] True"]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_serve_keeps_the_signal_handlers_the_program_gave_its_event_loop(
        tmp_path: Path, loop: str) -> None:
    """serve() left a program that had registered SIGTERM on its event loop ignoring
    SIGTERM once it returned: removing its own handler from the loop removed theirs."""
    proc = _script(tmp_path, _SERVE_IN_A_LOOP_WITH_HANDLERS, _loop(loop))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.splitlines() == ["after [\"program's\"]"]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_signal_another_thread_catches_stops_an_idle_server_at_once(
        tmp_path: Path, loop: str) -> None:
    """The kernel may hand a process's signal to any thread; the Python handler runs on
    the main thread, which an idle asyncio loop only wakes for with a wakeup fd."""
    proc = _script(tmp_path, _SIGNAL_ON_ANOTHER_THREAD, _loop(loop),
                   os.fspath(tmp_path / "q.sqlite"))
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.splitlines() == ["stopped True -1"]  # and the wakeup fd is gone again


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("handler", ["own", "default"])
def test_main_puts_back_the_signal_handlers_it_found(tmp_path: Path, loop: str,
                                                     handler: str) -> None:
    """A program that runs the command line and goes on gets SIGTERM as before: its own
    handler runs, or the default action ends it; it is not left ignoring the signal."""
    proc = _script(tmp_path, _MAIN, handler, _loop(loop))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("listening on ")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if handler == "own":
        assert proc.returncode == 0, err
        assert out.splitlines() == ["returned 0 []", "sigint True", "after [15]"]
    else:
        assert proc.returncode == -signal.SIGTERM, err
        assert out.splitlines() == ["returned 0 []", "sigint True"]


# ---- shutdown ---------------------------------------------------------------------------


class _GatedTake:
    """An engine whose ``take`` from queue "gated" waits for ``gate`` (``entered`` says it
    began)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.name = inner.name
        self.gate = threading.Event()
        self.entered = threading.Event()

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> Any:
        if queue == "gated":
            self.entered.set()
            self.gate.wait(10)
        return self._inner.take(queue, n, now, lease)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


@pytest.mark.parametrize("leased", [False, True])
def test_a_take_of_a_dropped_connection_still_running_at_shutdown_is_given_back(
        tmp_path: Path, leased: bool) -> None:
    """The client left while its take ran; the server then shuts down. The records the
    take removed (or leased) go back before the engine closes: the server waits for the
    requests of connections that already ended too, not only for those of open ones."""
    path = tmp_path / "q.sqlite"
    engine = _GatedTake(open_engine(path))
    srv = ThreadedServer(str(path), engine=engine)
    try:
        assert srv.server is not None
        eng = RemoteEngine(srv.url)
        try:
            eng.append("gated", [b"job"], [3], time.time())
        finally:
            eng.close()
        client = Raw(srv.url)
        now = time.time()
        client.send("take", queue="gated", n=1, now=now,
                    lease=["gone", now + 600] if leased else None)
        assert engine.entered.wait(5)
        client.close()
        _until(lambda: not srv.server.connections)  # the server saw it end
        srv.loop.call_soon_threadsafe(srv.server.close)
        time.sleep(0.3)  # the shutdown is under way, waiting for nothing it knows of
        engine.gate.set()
    finally:
        engine.gate.set()
        srv.stop()
    check = open_engine(path)
    try:
        assert tuple(check.counts("gated"))[:2] == (1, 0)
    finally:
        check.close()


# ---- max_frame boundaries ---------------------------------------------------------------


def _largest_append(eng: RemoteEngine, queue: str, limit: int) -> int:
    """Append the largest record the client lets through (a frame of at most the server's
    max_frame); return its size."""
    for size in range(limit, 0, -1):
        try:
            eng.append(queue, [b"x" * size], [size], time.time())
        except spoolq.EngineError as exc:
            assert "exceeds the server's limit" in str(exc)
            continue
        return size
    raise AssertionError("nothing fits")


@pytest.mark.parametrize("leased", [False, True])
def test_the_largest_record_a_server_accepts_can_be_taken_with_a_reply_of_that_size(
        tmp_path: Path, leased: bool) -> None:
    """A record in a frame of max_frame bytes fits a reply of max_frame bytes: the server
    sends it to a client whose max_reply is the server's max_frame rather than refuse it
    on an estimate of its size, which left it at the head of the queue for good."""
    with ThreadedServer(":memory:", max_frame=65536) as srv:
        eng = RemoteEngine(srv.url, max_reply=65536)
        try:
            size = _largest_append(eng, "q", 65536)
            assert size > 65536 - 100
            eng.append("q", [b"next"], [4], time.time())
            now = time.time()
            got = eng.take("q", 5, now, Lease("w", now + 60) if leased else None)
            assert [len(r.data) for r in got] == [size, 4]
        finally:
            eng.close()


@pytest.mark.parametrize("op", ["peek", "take", "peek_leased"])
def test_a_reply_may_take_exactly_the_max_reply_of_its_client(op: str) -> None:
    with ThreadedServer(":memory:") as srv:
        eng = RemoteEngine(srv.url)
        try:
            eng.append("q", [b"a" * 900, b"b" * 900, b"c" * 900], [900] * 3, time.time())
            now = time.time()
            if op == "peek_leased":
                eng.take("q", 3, now, Lease("owner-" + "o" * 40, now + 600))
            fields = {"queue": "q", "n": 2}
            if op == "take":
                fields.update(now=now, lease=["w", now + 600])
            exact = len(encode_reply(1, eng._call(op if op != "take" else "peek",
                                                  {"queue": "q", "n": 2}
                                                  if op != "peek_leased" else fields))) - 4
            for max_reply, count in ((exact, 2), (exact - 1, 1)):
                client = Raw(srv.url)
                try:
                    client.call("hello", max_reply=max_reply)
                    reply = client.call(op, **fields)
                    if op == "peek_leased":
                        assert len(reply[1]) == count
                    else:
                        assert len(reply) == count * RECORD_FIELDS
                    if op == "take":  # give them back for the next round
                        deliveries = [[reply[i], reply[i + 3]]
                                      for i in range(0, len(reply), RECORD_FIELDS)]
                        client.call("release", queue="q", owner="w", deliveries=deliveries,
                                    not_before=0.0, count_attempt=False)
                finally:
                    client.close()
        finally:
            eng.close()


def test_the_reply_sizes_the_server_counts_are_those_of_the_frames_it_sends() -> None:
    from spoolq._replysize import fitting as records_fitting
    from spoolq._replysize import fitting_leased
    from spoolq.engines import LeasedRecord, StoredRecord
    from spoolq.protocol import encode_leased, encode_records

    recs = [StoredRecord(i, b"x" * n, n, a, t, r) for i, n, a, t, r in [
        (1, 0, 0, 0.0, None), (23, 23, 1, 1.7e9, "nacked"), (24, 24, 255, 1.5, "é" * 30),
        (2**16, 300, 2**16, 12.0, None), (2**32, 70000, 3, -1.0, "owner died"),
        (2**40, 5, 2**33, 1e300, "x" * 300)]]
    leased = [LeasedRecord(r, owner, 1.7e9) for r, owner in zip(
        recs, ["w", "ü" * 30, "o" * 24, "", "p" * 300, "q"], strict=True)]
    for k in range(1, len(recs) + 1):
        for fitting, encode, items in ((records_fitting, encode_records, recs),
                                       (fitting_leased, encode_leased, leased)):
            length = len(encode_reply(1, encode(items[:k]))) - 4
            assert fitting(items, length, "q") == k
            if k > 1:
                assert fitting(items, length - 1, "q") == k - 1
            else:
                with pytest.raises(spoolq.ConfigurationError, match=f"takes {length:,} bytes"):
                    fitting(items, length - 1, "q")


def test_a_connection_whose_tls_handshake_ends_after_the_shutdown_began_is_not_served(
        tmp_path: Path) -> None:
    """The server stops accepting when it shuts down; a client it accepted just before,
    whose TLS handshake ends afterwards, is closed rather than served while the engine
    is about to close."""
    from .test_server import _self_signed

    cert, key = _self_signed(tmp_path)
    path = tmp_path / "q.sqlite"
    engine = _GatedTake(open_engine(path))
    srv = ThreadedServer(str(path), engine=engine, tls_cert=cert, tls_key=key)
    late = None
    try:
        assert srv.server is not None
        ctx = ssl.create_default_context(cafile=str(cert))
        host, port = srv.url.removeprefix("spoolq://").rsplit(":", 1)
        busy = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10),
                               server_hostname=host)
        busy.sendall(encode_preamble() + encode_frame(FrameType.REQUEST, 1, {
            "op": "take", "queue": "gated", "n": 1, "now": time.time()}))
        assert engine.entered.wait(5)  # the shutdown will wait for this take
        plain = socket.create_connection((host, int(port)), timeout=10)
        time.sleep(0.2)  # accepted; its handshake has not begun
        srv.loop.call_soon_threadsafe(srv.server.close)
        _until(lambda: srv.server is not None and srv.server.stopping)
        late = ctx.wrap_socket(plain, server_hostname=host)
        late.settimeout(3)
        with contextlib.suppress(OSError):
            late.sendall(encode_preamble() + encode_frame(FrameType.REQUEST, 1, {
                "op": "counts", "queue": "q"}))
        data = b""
        with contextlib.suppress(OSError):
            while chunk := late.recv(65536):
                data += chunk
        assert data == b"", "a connection made during the shutdown was served"
        engine.gate.set()
        busy.close()
    finally:
        engine.gate.set()
        if late is not None:
            late.close()
        srv.stop()


# ---- long-polls -------------------------------------------------------------------------


def test_a_long_poll_take_of_no_records_answers_at_once(served: ThreadedServer) -> None:
    """A take of n=0 can never take anything: it does not wait for records."""
    client = Raw(served.url)
    try:
        started = time.monotonic()
        assert client.call("take", queue="q", n=0, now=time.time(), wait=5.0) == []
        assert time.monotonic() - started < 2
    finally:
        client.close()


@pytest.mark.parametrize("op", ["take", "lease", "wait"])
def test_a_long_poll_of_a_client_that_left_ends_and_takes_nothing(
        served: ThreadedServer, op: str) -> None:
    assert served.server is not None
    client = Raw(served.url)
    now = time.time()
    if op == "wait":
        client.send("wait", queue="q", timeout=30.0)
    else:
        client.send("take", queue="q", n=1, now=now, wait=30.0,
                    lease=["gone", now + 600] if op == "lease" else None)
    _until(lambda: served.server is not None and bool(served.server.busy))
    client.close()
    _until(lambda: served.server is not None and not served.server.busy)
    eng = RemoteEngine(served.url)
    try:
        eng.append("q", [b"for someone present"], [19], time.time())
        time.sleep(0.3)
        assert _data(eng.take("q", 5, time.time(), None)) == [b"for someone present"]
    finally:
        eng.close()


@pytest.mark.parametrize("op", ["take", "wait"])
def test_a_long_poll_answers_when_its_time_is_up(served: ThreadedServer, op: str) -> None:
    client = Raw(served.url)
    try:
        started = time.monotonic()
        if op == "wait":
            assert client.call("wait", queue="q", timeout=0.5) is False
        else:
            assert client.call("take", queue="q", n=1, now=time.time(), wait=0.5) == []
        assert 0.45 <= time.monotonic() - started < 1.5
    finally:
        client.close()


def test_a_frame_of_exactly_max_frame_is_taken_and_one_byte_more_refused() -> None:
    def append(size: int) -> bytes:
        return encode_frame(FrameType.REQUEST, 1, {"op": "append", "queue": "q",
                                                   "records": [b"x" * size], "sizes": [size],
                                                   "now": 1.0})

    size = 65536 - (len(append(65000)) - 4 - 65000)
    assert len(append(size)) - 4 == 65536  # the length counts all but its own 4 bytes
    with ThreadedServer(":memory:", max_frame=65536) as srv:
        client = Raw(srv.url)
        try:
            client.sock.sendall(append(size))
            assert client.frame()[0] == FrameType.REPLY
        finally:
            client.close()
        client = Raw(srv.url)
        try:
            client.sock.sendall(append(size + 1)[:9])  # refused from its header alone
            kind, _, body = client.frame()
            assert (kind, body["code"]) == (FrameType.ERROR, ErrorCode.FRAME_TOO_LARGE)
            assert client.closed_by_server() == b""
        finally:
            client.close()
        eng = RemoteEngine(srv.url)
        try:
            assert [len(r.data) for r in eng.take("q", 5, time.time(), None)] == [size]
        finally:
            eng.close()
