"""Real server processes restarted, or a connection cut by the network, under clients
that are blocked in gets, pipelining puts or holding leases."""

from __future__ import annotations

import asyncio
import contextlib
import select
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import spoolq

from .servers import ServerProcess


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_blocked_gets_ride_out_a_restart_and_each_item_reaches_one_of_them(
        tmp_path: Path, sig: int) -> None:
    path = str(tmp_path / "q.sqlite")
    srv = ServerProcess(path)
    url = f"{srv.url}/jobs"
    got: list[Any] = []
    errors: list[BaseException] = []

    def consume() -> None:
        with spoolq.SyncQueue.create(url) as q:
            try:
                got.append(q.get(timeout=8))
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=consume) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    srv.stop(sig)
    srv = ServerProcess(path, port=srv.port)
    try:
        with spoolq.SyncQueue.create(url) as producer:
            producer.put_many(range(6))
            for t in threads:
                t.join(15)
            assert not errors
            assert sorted(got) == list(range(6))
    finally:
        srv.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_confirmed_pipelined_puts_survive_a_kill_and_failed_ones_raise(
        tmp_path: Path, sig: int) -> None:
    path = str(tmp_path / "q.sqlite")
    srv = ServerProcess(path)
    url = f"{srv.url}/jobs"
    confirmed: list[tuple[int, int]] = []
    failed: list[BaseException] = []

    async def main() -> None:
        q = await spoolq.Queue.create(url)

        async def produce(w: int) -> None:
            for k in range(100000):
                try:
                    await asyncio.wait_for(q.put((w, k)), 10)
                except Exception as exc:
                    failed.append(exc)
                    return
                confirmed.append((w, k))

        tasks = [asyncio.create_task(produce(w)) for w in range(10)]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(srv.stop, sig)
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        with contextlib.suppress(spoolq.errors.EngineError):
            await q.aclose()

    asyncio.run(main())
    assert len(failed) == 10
    assert all(isinstance(e, spoolq.errors.EngineError) for e in failed)
    srv = ServerProcess(path, port=srv.port)
    try:
        with spoolq.SyncQueue.create(url) as q:
            stored = [tuple(x) for x in q.get_many(10**6, block=False)]
    finally:
        srv.stop()
    assert len(stored) == len(set(stored))
    assert set(confirmed) <= set(stored)
    assert len(stored) - len(confirmed) <= 10  # at most one unknown put per producer


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_leases_stay_ackable_across_a_server_restart(tmp_path: Path, sig: int) -> None:
    path = str(tmp_path / "q.sqlite")
    srv = ServerProcess(path)
    url = f"{srv.url}/jobs"
    with spoolq.SyncQueue.create(url) as q:
        q.put_many(range(4))
        one = q.lease(timeout=1)
        two = q.lease_many(2, timeout=1)
        srv.stop(sig)
        srv = ServerProcess(path, port=srv.port)
        try:
            q.ack(one)
            q.ack(*two)
            with spoolq.SyncQueue.create(url) as other:
                assert other.get_many(10, timeout=0.3) == [3]
        finally:
            srv.stop()


class _CutOnMarker:
    """A TCP relay to a server that closes both sides, dropping the bytes, when the
    server's side sends ``marker`` (the network failing as a reply is on its way)."""

    def __init__(self, port: int, marker: bytes) -> None:
        self.target, self.marker, self.cut = port, marker, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        with contextlib.suppress(OSError, EOFError), client, server:
            while True:
                ready, _, _ = select.select([client, server], [], [], 30)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        raise EOFError
                    if sock is server and self.marker in data and not self.cut:
                        self.cut += 1
                        raise EOFError
                    (server if sock is client else client).sendall(data)

    def close(self) -> None:
        self.listener.close()


def test_a_get_whose_reply_the_network_lost_raises_unavailable(tmp_path: Path) -> None:
    """docs/api.md: a get whose connection is lost after its request went out raises
    Unavailable (the server may have removed its items). The item here was removed."""
    with ServerProcess(":memory:") as srv:
        relay = _CutOnMarker(srv.port, b"MARKER-7")
        try:
            with spoolq.SyncQueue.create(f"spoolq://127.0.0.1:{relay.port}/jobs") as q, \
                    spoolq.SyncQueue.create(f"{srv.url}/jobs") as direct:
                direct.put("MARKER-7")
                with pytest.raises(spoolq.errors.Unavailable):
                    q.get(timeout=1.5)
                assert relay.cut == 1
                with pytest.raises(spoolq.Empty):  # the server removed it: it is lost
                    direct.get_many(10, block=False)
        finally:
            relay.close()


def test_an_async_get_whose_reply_the_network_lost_raises_unavailable(tmp_path: Path) -> None:
    async def main(url: str, direct: spoolq.SyncQueue[str]) -> None:
        async with await spoolq.Queue.create(url) as q:
            direct.put("MARKER-8")
            with pytest.raises(spoolq.errors.Unavailable, match="may have removed"):
                await asyncio.wait_for(q.get(), 3)

    with ServerProcess(":memory:") as srv:
        relay = _CutOnMarker(srv.port, b"MARKER-8")
        try:
            with spoolq.SyncQueue.create(f"{srv.url}/jobs") as direct:
                asyncio.run(main(f"spoolq://127.0.0.1:{relay.port}/jobs", direct))
                assert relay.cut == 1
        finally:
            relay.close()


def test_a_lease_whose_reply_the_network_lost_waits_and_gets_the_item_again(
        tmp_path: Path) -> None:
    # The server gives back what the lost connection leased: the lease takes it again.
    with ServerProcess(":memory:") as srv:
        relay = _CutOnMarker(srv.port, b"MARKER-9")
        try:
            with spoolq.SyncQueue.create(f"spoolq://127.0.0.1:{relay.port}/jobs") as q, \
                    spoolq.SyncQueue.create(f"{srv.url}/jobs") as direct:
                direct.put("MARKER-9")
                msg = q.lease(timeout=5)
                assert (msg.item, msg.attempts, relay.cut) == ("MARKER-9", 2, 1)
                q.ack(msg)
        finally:
            relay.close()
