"""Server sessions over real sockets: whose leases a dropped connection gives back, signal
handlers of serve() and main(), long-polls, deadlines, frame limits, shutdown."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from spoolq.engines import Lease
from spoolq.engines.remote import RemoteEngine
from spoolq.protocol import RECORD_FIELDS, FrameType, encode_frame, encode_preamble

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
