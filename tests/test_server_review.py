"""The server and the remote client at their edges: disconnects in the middle of a request,
clocks that differ, interrupted calls, unauthenticated clients, slow replies."""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from spoolq.engines import Engine, Lease, StoredRecord, open_engine
from spoolq.engines.remote import RemoteEngine
from spoolq.protocol import (
    FrameType,
    encode_frame,
    encode_preamble,
)

from .servers import ServerProcess, ThreadedServer


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


def _request(ident: int, op: str, **fields: Any) -> bytes:
    return encode_frame(FrameType.REQUEST, ident, {"op": op, **fields})


def _frames(data: bytes) -> list[tuple[int, int, Any]]:
    """(type, id, body) of each complete frame in ``data``."""
    out = []
    while len(data) >= 4 and len(data) >= 4 + struct.unpack_from(">I", data)[0]:
        length, ftype, ident = struct.unpack_from(">IBI", data)
        out.append((ftype, ident, cbor2.loads(data[9:4 + length])))
        data = data[4 + length:]
    return out


def _until(condition: Any, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.01)


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
            sock.sendall(encode_preamble() + _request(
                1, "take", queue=name, n=1, now=time.time(),
                lease=["dropping", time.time() + 600]))
            (reply,) = _frames(sock.recv(65536)[8:] or sock.recv(65536))
            assert reply[0] == FrameType.REPLY and reply[2][1] == b"dropped"
        _until(lambda: eng.counts(name).ready > 0)  # the dropped connection's lease is back
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
                sock.sendall(encode_preamble() + _request(
                    1, "take", queue="gated", n=1, now=time.time(),
                    lease=["gone", time.time() + 600], max_attempts=1))
                assert engine.entered.wait(5)
            assert srv.server is not None
            _until(lambda: len(srv.server.connections) == 1)  # the server saw it end
            engine.gate.set()
            _until(lambda: eng.counts("gated").leased == 0)
            assert (eng.counts("gated").ready, eng.counts("gated.dead").ready) == (1, 0)
            (again,) = eng.take("gated", 1, time.time(), Lease("next", time.time() + 60))
            assert (again.data, again.attempts) == (b"job", 1)
        finally:
            eng.close()
