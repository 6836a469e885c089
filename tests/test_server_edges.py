"""The server and the remote client at their edges: disconnects in the middle of a request,
clocks that differ, interrupted calls, unauthenticated clients, slow replies."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq.engines import Engine, Lease, MemoryEngine, StoredRecord, open_engine
from spoolq.engines.remote import ConnectionLost, RemoteEngine
from spoolq.protocol import (
    ErrorCode,
    FrameType,
    ProtocolError,
    ServerProtocol,
    encode_preamble,
    encode_reply,
)
from spoolq.server import Server
from spoolq.session import Session

from .servers import ServerProcess, ThreadedServer, reply_frames, request_frame, wait_until


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(":memory:") as proc:
        yield proc


@pytest.fixture
def name() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("spoolq://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)





# ---- leases of a dropped connection -----------------------------------------------------


def test_a_dropped_connection_releases_only_its_own_leases_whatever_the_clocks(
        server: ServerProcess, name: str) -> None:
    """The server releases the leases of a connection that dropped: those of its owners,
    not every lease its own clock finds run out. A client whose clock is a minute behind
    holds a lease for 30 s of its time; another client dropping must not end it."""
    eng = RemoteEngine(server.url)
    try:
        eng.append(name, [b"held", b"dropped"], [4, 7], time.time())
        behind = time.time() - 60
        (held,) = eng.take(name, 1, behind, Lease("slow-clock", behind + 30))
        with _raw(server.url) as sock:
            sock.sendall(encode_preamble() + request_frame(
                1, "take", queue=name, n=1, now=time.time(),
                lease=["dropping", time.time() + 600]))
            (reply,) = reply_frames(sock.recv(65536)[8:] or sock.recv(65536))
            assert reply[0] == FrameType.REPLY and reply[2][1] == b"dropped"
        wait_until(lambda: eng.counts(name).ready > 0)  # the dropped connection's lease is back
        assert eng.counts(name).leased == 1, "the lease of a live client was ended"
        assert eng.ack(name, [(held.id, held.attempts)], "slow-clock") == [held.id]
    finally:
        eng.close()


class _GatedTake:
    """An engine whose ``take`` waits for ``gate`` (and says so in ``entered``)."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.gate = threading.Event()
        self.entered = threading.Event()

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        if queue == "gated":
            self.entered.set()
            self.gate.wait(5)
        return self._inner.take(queue, n, now, lease)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


def test_a_take_running_when_its_connection_drops_is_undone_not_counted(
        tmp_path: Path) -> None:
    """The records of a take whose client left while the engine ran it go back as they
    were: not as a delivery that counts toward max_attempts (they were never delivered)."""
    engine = _GatedTake(open_engine(tmp_path / "q.sqlite"))
    with ThreadedServer(str(tmp_path / "q.sqlite"), engine=engine) as srv:
        eng = RemoteEngine(srv.url)
        try:
            eng.append("gated", [b"job"], [3], time.time())
            with _raw(srv.url) as sock:
                sock.sendall(encode_preamble() + request_frame(
                    1, "take", queue="gated", n=1, now=time.time(),
                    lease=["gone", time.time() + 600], max_attempts=1))
                assert engine.entered.wait(5)
            assert srv.server is not None
            wait_until(lambda: len(srv.server.connections) == 1)  # the server saw it end
            engine.gate.set()
            wait_until(lambda: eng.counts("gated").leased == 0)
            assert (eng.counts("gated").ready, eng.counts("gated.dead").ready) == (1, 0)
            (again,) = eng.take("gated", 1, time.time(), Lease("next", time.time() + 60))
            assert (again.data, again.attempts) == (b"job", 1)
        finally:
            eng.close()


# ---- the remote engine ------------------------------------------------------------------


class _Interrupted(Exception):
    pass


def _interrupt(signum: int, frame: object) -> None:
    raise _Interrupted


def test_a_call_interrupted_while_it_waits_leaves_no_reply_behind(
        server: ServerProcess, name: str) -> None:
    """A call ended by an exception while it waits for its reply (a signal handler's,
    KeyboardInterrupt) has an unknown outcome: its connection is closed, so the server
    does not take records for a reply nobody reads."""
    eng = RemoteEngine(server.url)
    writer = RemoteEngine(server.url)
    old = signal.signal(signal.SIGALRM, _interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(_Interrupted):
            eng.take(name, 1, time.time(), None, wait=3.0)
        time.sleep(0.3)  # the server notices the closed connection
        writer.append(name, [b"for the next call"], [17], time.time())
        time.sleep(0.3)  # a long-poll left running would take the record now
        assert [r.data for r in eng.take(name, 1, time.time(), None)] == [b"for the next call"]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        eng.close()
        writer.close()


class _TricklingServer:
    """Speaks the handshake, then sends each later reply one byte every ``pause`` s."""

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"spoolq://127.0.0.1:{self.listener.getsockname()[1]}/q"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, contextlib.suppress(OSError):  # the client may leave mid-reply
            proto = ServerProtocol()
            while not self._stop.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                for req in proto.receive_data(data):
                    out = proto.data_to_send()
                    if req.op == "hello":
                        conn.sendall(out + encode_reply(req.id, {
                            "server": "test", "version": 2, "engine": "memory",
                            "max_frame": 1 << 20, "time": time.time()}))
                        continue
                    reply = out + encode_reply(req.id, [0, 0, 0, 0])
                    for i in range(len(reply)):
                        if self._stop.is_set():
                            return
                        conn.sendall(reply[i:i + 1])
                        time.sleep(self.pause)

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(5)


def test_the_call_timeout_bounds_the_whole_reply_not_each_read() -> None:
    """A server that sends its reply a byte at a time cannot stretch a call past its
    timeout: the timeout is for the whole call."""
    slow = _TricklingServer(pause=0.1)
    eng = RemoteEngine(slow.url, timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match="in time"):
            eng.counts("q")
        assert time.monotonic() - started < 1.5
    finally:
        eng.close()
        slow.close()


# ---- authentication ---------------------------------------------------------------------


def test_before_auth_a_request_is_refused_as_soon_as_its_header_arrives(
        tmp_path: Path) -> None:
    """With a token, nothing but an AUTH frame is read before the client authenticated:
    a large request is refused at its header, not buffered up to the frame limit first."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret")
    with ServerProcess(":memory:", "--token-file", str(token_file)) as srv:
        for ftype in (FrameType.REQUEST, FrameType.AUTH):
            with _raw(srv.url) as sock:
                sock.settimeout(3)
                header = struct.pack(">IBI", 8 << 20, ftype, 1)
                sock.sendall(encode_preamble() + header + b"\0" * 1000)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                assert data[:8] == encode_preamble()
                ((kind, _, body),) = reply_frames(data[8:])
                assert kind == FrameType.ERROR
                assert body["code"] in (ErrorCode.AUTH, ErrorCode.FRAME_TOO_LARGE)
        with spoolq.SyncQueue.create(srv.url + "/jobs", name="jobs",
                                     engine_options={"token": "s3cret"}) as q:
            q.put("authenticated")
            assert q.get(timeout=1) == "authenticated"


# ---- replies that cannot be sent --------------------------------------------------------


class _DyingTransport:
    """A transport whose connection is failing: asyncio has seen a write error and will
    call ``connection_lost`` on a later turn of the loop; what is written meanwhile is lost."""

    def __init__(self) -> None:
        self.closing = False
        self.written = bytearray()

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if key == "peername" else default

    def write(self, data: bytes) -> None:
        if not self.closing:
            self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _OnThread:
    """The memory engine, called on the server's engine thread like a file engine."""

    inline = False

    def __init__(self) -> None:
        self._inner = MemoryEngine()
        self.name = "memory"

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


def test_a_get_whose_reply_cannot_be_written_any_more_gives_its_records_back() -> None:
    """When the connection fails between the engine's take and its reply (the transport
    is closing, connection_lost not called yet), the records go back to the queue."""

    async def main() -> tuple[int, bytes]:
        engine = _OnThread()
        engine.append("q", [b"item"], [4], time.time())
        server = Server(engine)  # type: ignore[arg-type]
        session = Session(server)
        transport = _DyingTransport()
        session.connection_made(transport)  # type: ignore[arg-type]
        session.data_received(encode_preamble() + request_frame(1, "take", queue="q", n=1,
                                                           now=time.time()))
        assert session.inflight == 1
        transport.closing = True  # a write failed meanwhile
        while session.inflight:
            await asyncio.sleep(0.01)
        session.connection_lost(ConnectionResetError())
        ready = (await server.runner.run("counts", {"queue": "q"}))[0]
        server.close()
        await server.wait_closed()
        return ready, bytes(transport.written)

    ready, written = asyncio.run(main())
    assert written == encode_preamble()
    assert ready == 1, "the record taken for a reply that was never sent is lost"


# ---- shutdown ---------------------------------------------------------------------------


def test_sigterm_answers_pipelined_requests_and_ends_without_a_reset(tmp_path: Path) -> None:
    """A client that pipelines requests gets a reply to every request the server ran, then
    the end of the stream: requests still unread when the server stopped are not run, and
    closing does not reset the connection (a reset destroys replies not yet read)."""
    path = str(tmp_path / "q.sqlite")
    n = 1000
    requests = b"".join(request_frame(i, "append", queue="q", records=[b"x" * 100], sizes=[100],
                                 now=time.time()) for i in range(1, n + 1))
    with ServerProcess(path) as srv, _raw(srv.url) as sock:
        srv.proc.send_signal(signal.SIGSTOP)
        sender = threading.Thread(target=sock.sendall, args=(encode_preamble() + requests,))
        sender.start()
        time.sleep(0.2)  # the requests wait in the server's socket, unread
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.send_signal(signal.SIGCONT)
        data = b""
        while chunk := sock.recv(1 << 20):  # a reset raises ConnectionResetError here
            data += chunk
        sender.join(5)
        sock.close()
        assert srv.proc.wait(10) == 0
    replies = reply_frames(data[8:])
    assert {kind for kind, _, _ in replies} <= {FrameType.REPLY}
    with ServerProcess(path) as again:
        eng = RemoteEngine(again.url)
        try:
            assert eng.counts("q").ready == len(replies)  # every request run was answered
        finally:
            eng.close()


def _greeting_server(greeting: dict[str, object]) -> tuple[socket.socket, threading.Thread]:
    """A server that answers the handshake with ``greeting`` and then waits."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:  # closed before the client came
            return
        with conn, contextlib.suppress(OSError):
            proto = ServerProtocol()
            while data := conn.recv(65536):
                for req in proto.receive_data(data):
                    conn.sendall(proto.data_to_send() + encode_reply(req.id, greeting))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize("server_time", ["noon", None, float("nan"), [1]])
def test_a_greeting_with_a_clock_that_is_no_number_is_a_protocol_error(
        server_time: object) -> None:
    listener, thread = _greeting_server({"server": "x", "version": 2, "engine": "memory",
                                         "max_frame": 1 << 20, "time": server_time})
    try:
        with pytest.raises(ProtocolError, match="unexpected greeting"):
            RemoteEngine(f"spoolq://127.0.0.1:{listener.getsockname()[1]}/q").counts("q")
    finally:
        listener.close()
        thread.join(5)
