"""Durability under attack: group commits whose write fails part way or with its outcome
unknown, puts cancelled or closed in the middle of a group, and what the file holds
afterwards against what the callers were told."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import spoolq
from spoolq import Queue, SyncQueue
from spoolq.engines import open_engine
from spoolq.errors import Unavailable

from .failing import FailingAppend
from .servers import ThreadedServer, wait_until


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of a server. Once :meth:`arm` is called, the
    next request a client sends reaches the server, and when the server's reply comes
    the proxy closes the client's connection instead of passing it on: the request took
    effect, and the client never hears of it (a connection lost before the reply)."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._armed = threading.Event()
        self.cut = threading.Event()
        self._cutting = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self) -> None:
        self._armed.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            self._socks += [client, server]
            threading.Thread(target=self._up, args=(client, server), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self._armed.is_set():
                    self._armed.clear()
                    self._cutting = True
                server.sendall(data)
        _hang_up(client, server)

    def _down(self, server: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if self._cutting:
                    self._cutting = False
                    self.cut.set()
                    break
                client.sendall(data)
        _hang_up(client, server)

    def close(self) -> None:
        self._listener.close()
        for sock in self._socks:
            _hang_up(sock)
            sock.close()


def _hang_up(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def _proxied(tmp_path: Path) -> Iterator[tuple[str, CuttingProxy]]:
    with ThreadedServer(str(tmp_path / "served.sqlite")) as server:
        port = int(server.url.rsplit(":", 1)[1])
        proxy = CuttingProxy(port)
        try:
            yield f"spoolq://127.0.0.1:{proxy.port}/jobs", proxy
        finally:
            proxy.close()


def _check_told_right(results: dict[str, BaseException | None], stored: list[str]) -> None:
    """No item is stored twice, and every put that returned has its item stored."""
    counts = collections.Counter(stored)
    assert max(counts.values()) == 1, stored
    for item, error in results.items():
        if error is None:
            assert item in counts, (results, stored)
        else:
            assert isinstance(error, Unavailable), results


# ---- a group commit whose reply was lost ------------------------------------------------


def test_threads_group_commit_whose_reply_was_lost_is_not_written_again(
        tmp_path: Path) -> None:
    # The server stored the group's records and the connection was lost before its
    # reply: the outcome is unknown. The group was written again in halves, each put
    # returned, and every item was stored twice.
    with _proxied(tmp_path) as (url, proxy):
        results: dict[str, BaseException | None] = {}

        def put(item: str) -> None:
            try:
                q.put(item)
                results[item] = None
            except spoolq.SpoolqError as exc:
                results[item] = exc

        with SyncQueue.create(url, poll_interval=30) as q:
            q.put("first")  # connected
            threads = [threading.Thread(target=put, args=(f"t{i}",)) for i in range(4)]
            with q._core.lock:  # a write under way: the four make one group
                for thread in threads:
                    thread.start()
                wait_until(lambda: q.qsize() == 5)
                proxy.arm()
            for thread in threads:
                thread.join(10)
                assert not thread.is_alive()
            assert proxy.cut.is_set()
            stored = q.peek(100)
        assert stored[0] == "first"
        _check_told_right(results, stored[1:])


async def test_tasks_group_commit_whose_reply_was_lost_is_not_written_again(
        tmp_path: Path) -> None:
    with _proxied(tmp_path) as (url, proxy):
        async with await Queue.create(url, poll_interval=30) as q:
            await q.put("first")
            items = [f"t{i}" for i in range(4)]
            q._core.lock.acquire()
            try:
                puts = asyncio.gather(*(q.put(item) for item in items),
                                      return_exceptions=True)
                while q.qsize() < 5:
                    await asyncio.sleep(0.001)
                proxy.arm()
            finally:
                q._core.lock.release()
            answers = await asyncio.wait_for(puts, 10)
            assert proxy.cut.is_set()
            stored = await q.peek(100)
        assert stored[0] == "first"
        _check_told_right(dict(zip(items, answers, strict=True)), stored[1:])


# ---- cancelled puts ---------------------------------------------------------------------


async def test_a_put_cancelled_before_its_write_after_a_failed_flush_is_not_stored(
        tmp_path: Path) -> None:
    # With "buffer", a flush that failed keeps its puts for the next one. A put cancelled
    # after that, while it waited for a write that had not begun, raised CancelledError
    # and was stored all the same: the buffer no longer lined up with its puts, and the
    # put could not be taken back.
    path = str(tmp_path / "q.sqlite")
    engine = FailingAppend(open_engine(path))
    async with await Queue.create(path, engine=engine, durability="buffer", flush_items=2,
                                  flush_interval=60) as q:
        await q.put("a")
        engine.failures = 1
        b = asyncio.create_task(q.put("b"))  # due: its write fails, the buffer is kept
        while engine.failures:
            await asyncio.sleep(0.001)
        q._core.lock.acquire()  # a write under way: c waits for the next one
        try:
            await q._worker.submit(lambda: None)  # b's write is over
            assert not b.done() and q.qsize() == 2
            c = asyncio.create_task(q.put("c"))
            while q.qsize() < 3:
                await asyncio.sleep(0.001)
            c.cancel()
            with pytest.raises(asyncio.CancelledError):
                await c
            assert q.qsize() == 2
        finally:
            q._core.lock.release()
        await asyncio.wait_for(b, 10)
        assert q.qsize() == 2 and q.stats["unfinished"] == 2
        assert await q.peek(10) == ["a", "b"]
    with SyncQueue.create(path) as q:
        assert q.get_many(None, block=False) == ["a", "b"]
