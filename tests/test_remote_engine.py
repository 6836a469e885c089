"""The remote engine against the engine contract, and the server's engine thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq.dispatch import EngineThread, make_runner
from spoolq.engines import Engine, MemoryEngine, open_engine
from spoolq.engines.remote import RemoteEngine, parse_url, url_queue_name
from spoolq.testing import EngineConformance

from .servers import ThreadedServer
from .waiting import assert_cancel_ends_a_wait, assert_one_wait_is_cancelled_alone


@pytest.fixture
def memory_server() -> Iterator[ThreadedServer]:
    with ThreadedServer(":memory:") as server:
        yield server


class TestRemoteOverMemory(EngineConformance):
    """Every connection reaches the same server, so records outlive a client's close."""

    @pytest.fixture
    def open_engine(self, memory_server: ThreadedServer) -> Callable[[], Engine]:
        return lambda: RemoteEngine(memory_server.url)


class TestRemoteOverSQLite(EngineConformance):
    @pytest.fixture
    def open_engine(self, tmp_path: Path) -> Iterator[Callable[[], Engine]]:
        with ThreadedServer(str(tmp_path / "served.sqlite")) as server:
            yield lambda: RemoteEngine(server.url)


def test_url_forms() -> None:
    a = parse_url("spoolq://:tok%40en@example.org:9000/jobs%2Fhigh")
    assert (a.host, a.port, a.queue, a.token, a.tls) == ("example.org", 9000, "jobs/high",
                                                         "tok@en", False)
    b = parse_url("spoolq://127.0.0.1/?token=abc&ca=/etc/ca.pem")
    assert (b.port, b.queue, b.token, b.tls, b.ca_file) == (7480, None, "abc", True,
                                                            "/etc/ca.pem")
    assert "abc" not in repr(b)
    assert url_queue_name("spoolq://h:1/jobs?token=x") == "jobs"
    assert url_queue_name("spoolq://h:1") is None and url_queue_name("jobs.sqlite") is None
    for bad in ("http://x/y", "spoolq:///nohost", "spoolq://h:notaport/q"):
        with pytest.raises(spoolq.ConfigurationError):
            parse_url(bad)


def test_read_only_refuses_writes_on_the_client(memory_server: ThreadedServer) -> None:
    eng = RemoteEngine(memory_server.url, read_only=True)
    try:
        assert eng.counts("q").ready == 0
        with pytest.raises(spoolq.EngineError, match="read-only"):
            eng.append("q", [b"x"], [1], 0.0)
    finally:
        eng.close()


def test_replies_stay_within_the_size_the_client_accepts(memory_server: ThreadedServer) -> None:
    writer = RemoteEngine(memory_server.url)
    reader = RemoteEngine(memory_server.url, max_reply=8192)
    try:
        writer.append("big", [b"x" * 1000] * 50, [1000] * 50, 0.0)
        got = reader.take("big", 50, 0.0, None)
        assert 1 <= len(got) < 10
        assert reader.counts("big").ready == 50 - len(got)
        assert [r.id for r in got] == sorted(r.id for r in got)
    finally:
        writer.close()
        reader.close()


def test_a_record_larger_than_the_client_accepts_stays_in_the_queue(
        memory_server: ThreadedServer) -> None:
    writer = RemoteEngine(memory_server.url)
    reader = RemoteEngine(memory_server.url, max_reply=4096)
    try:
        writer.append("huge", [b"h" * 6000, b"small"], [6000, 5], 0.0)
        for lease in (None, spoolq.engines.Lease("me", 1e12)):
            with pytest.raises(spoolq.ConfigurationError, match=r"record 1 .*max_reply"):
                reader.take("huge", 1, 0.0, lease)
            assert reader.counts("huge") == (2, 0, 6005, 6005)
        with pytest.raises(spoolq.ConfigurationError, match="record 1"):
            reader.peek("huge", 2)
        assert [r.data for r in writer.peek("huge", 2)] == [b"h" * 6000, b"small"]
        assert [r.data for r in writer.take("huge", 2, 0.0, None)] == [b"h" * 6000, b"small"]
        # peek and peek_leased trim their replies to the limit, as take does
        writer.append("many", [b"p" * 1000] * 20, [1000] * 20, 0.0)
        assert 1 <= len(reader.peek("many", 20)) < 5
        writer.take("many", 20, 0.0, spoolq.engines.Lease("w", 1e12))
        assert 1 <= len(reader.peek_leased("many", 20)) < 5
        # the connection is still good after each refusal
        assert reader.counts("many").leased == 20
        for bad in (512, 4096.0, "4096"):
            with pytest.raises(spoolq.ConfigurationError, match="max_reply"):
                RemoteEngine(memory_server.url, max_reply=bad)  # type: ignore[arg-type]
    finally:
        writer.close()
        reader.close()


def test_a_connection_lost_while_idle_is_replaced_before_the_next_call(
        memory_server: ThreadedServer) -> None:
    eng = RemoteEngine(memory_server.url)
    try:
        eng.append("q", [b"a"], [1], 0.0)
        assert eng._link is not None
        lost = eng._link
        lost.sock.shutdown(2)  # as if the network dropped the connection
        time.sleep(0.02)  # idle: a call within a millisecond of the last reply skips the check
        assert eng.counts("q").ready == 1
        assert eng._link is not lost
    finally:
        eng.close()


def test_a_connection_lost_during_a_call_fails_it_and_the_next_one_reconnects(
        memory_server: ThreadedServer) -> None:
    eng = RemoteEngine(memory_server.url, timeout=5)
    try:
        eng.append("q", [b"a"], [1], 0.0)
        assert eng._link is not None
        link = eng._link
        # the connection breaks while a long-poll take waits on it
        threading.Timer(0.2, link.sock.shutdown, (socket.SHUT_RDWR,)).start()
        with pytest.raises(spoolq.EngineError, match=r"connection|closed"):
            eng.take("empty", 1, 0.0, None, wait=3.0)
        assert eng.counts("q").ready == 1
    finally:
        eng.close()


def test_concurrent_appends_share_one_transaction() -> None:
    """While the engine thread is busy, appends queue up and then run as one."""

    async def main() -> tuple[int, list[Any]]:
        engine = MemoryEngine()
        gate = threading.Event()
        original = engine.get_meta
        engine.get_meta = lambda key: (gate.wait(5), original(key))[1]  # type: ignore[method-assign]
        thread = EngineThread(engine, asyncio.get_running_loop(), lambda queues: None)
        blocker = thread.run("get_meta", {"key": "k"})
        await asyncio.sleep(0.05)  # the thread now waits inside get_meta
        futures = [thread.run("append", {"queue": "q", "records": [b"%d" % i], "sizes": [1],
                                         "now": 0.0}) for i in range(20)]
        gate.set()
        await blocker
        ids = await asyncio.gather(*futures)
        thread.stop()
        await asyncio.to_thread(thread.join)
        return thread.transactions, ids

    transactions, ids = asyncio.run(main())
    assert [i for chunk in ids for i in chunk] == list(range(1, 21))
    assert transactions == 2  # get_meta, then all twenty appends at once


def test_an_append_the_engine_refuses_fails_alone_not_its_group(tmp_path: Path) -> None:
    """Appends that run as one transaction: one the engine refuses fails by itself."""

    async def main() -> tuple[list[Any], int]:
        engine = open_engine(str(tmp_path / "group.sqlite"))
        gate = threading.Event()
        original = engine.get_meta
        engine.get_meta = lambda key: (gate.wait(5), original(key))[1]  # type: ignore[method-assign]
        thread = EngineThread(engine, asyncio.get_running_loop(), lambda queues: None)
        blocker = thread.run("get_meta", {"key": "k"})
        await asyncio.sleep(0.05)
        futures = [thread.run("append", {"queue": "q", "records": [b"%d" % i],
                                         "sizes": [2**64 if i == 3 else 1], "now": 0.0})
                   for i in range(6)]
        gate.set()
        await blocker
        results = await asyncio.gather(*futures, return_exceptions=True)
        counts = await thread.run("counts", {"queue": "q"})
        thread.stop()
        await asyncio.to_thread(thread.join)
        return results, counts[0]

    results, ready = asyncio.run(main())
    assert isinstance(results[3], Exception)
    assert [r for k, r in enumerate(results) if k != 3] == [[1], [2], [3], [4], [5]]
    assert ready == 5


def test_a_wait_cancel_ends_its_own_wait_at_once(memory_server: ThreadedServer) -> None:
    eng = RemoteEngine(memory_server.url)
    try:
        assert_one_wait_is_cancelled_alone(eng, "idle", within=1.0)
        eng.append("idle", [b"x"], [1], 1.0)
        assert eng.wait_ready("idle", 5) is True, "a wait after the cancels must still hear"
    finally:
        eng.close()


def test_cancelled_async_gets_leave_no_thread_waiting(memory_server: ThreadedServer) -> None:
    """A get cancelled while it long-polls ends its wait at once: later gets keep their
    timeouts and the application's own threads are not held up."""

    async def main() -> tuple[float, float]:
        async with await spoolq.Queue.create(memory_server.url + "/empty",
                                             name="empty") as q:
            for _ in range(12):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(q.get(), 0.05)
            start = time.monotonic()
            with pytest.raises(spoolq.Empty):
                await q.get_many(1, timeout=0.5)
            get_many = time.monotonic() - start
            start = time.monotonic()
            await asyncio.gather(*(asyncio.to_thread(time.sleep, 0.01) for _ in range(8)))
            to_thread = time.monotonic() - start
            return get_many, to_thread

    get_many, to_thread = asyncio.run(main())
    assert get_many < 1.5, f"get_many(timeout=0.5) took {get_many:.1f} s"
    assert to_thread < 1.0, f"the application's to_thread calls took {to_thread:.1f} s"


def test_cancel_waits_ends_a_wait_at_once(memory_server: ThreadedServer) -> None:
    eng = RemoteEngine(memory_server.url)
    try:
        assert_cancel_ends_a_wait(eng, "idle", within=2.0)
    finally:
        eng.close()


def test_both_ends_send_small_frames_at_once(memory_server: ThreadedServer) -> None:
    """TCP_NODELAY on the client's socket and on the server's side of it."""
    eng = RemoteEngine(memory_server.url)
    try:
        assert eng._link is not None
        sock = eng._link.sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert memory_server.server is not None
        host, port = sock.getsockname()[:2]
        (session,) = [s for s in memory_server.server.connections if s.peer == f"{host}:{port}"]
        assert session.transport is not None
        server_sock = session.transport.get_extra_info("socket")
        assert server_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        eng.close()


def test_a_server_over_a_blocking_engine_uses_the_engine_thread(tmp_path: Path) -> None:
    """The memory engine never blocks and is called on the loop; SQLite gets a thread."""

    async def main() -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        memory = make_runner(MemoryEngine(), loop, lambda queues: None)
        sqlite = make_runner(open_engine(tmp_path / "q.sqlite"), loop, lambda queues: None)
        try:
            assert await memory.run("append", {"queue": "q", "records": [b"a"], "sizes": [1],
                                               "now": 0.0}) == [1]
            assert memory.transactions == 1
        finally:
            for runner in (memory, sqlite):
                runner.stop()
                await asyncio.to_thread(runner.join)
        return type(memory).__name__, type(sqlite).__name__

    assert asyncio.run(main()) == ("InlineRunner", "EngineThread")


@pytest.mark.parametrize("durability", ["commit", "buffer"])
def test_a_record_too_large_for_the_server_is_refused_at_its_put_and_loses_nothing(
        durability: str) -> None:
    """With "buffer" the record used to wait in the buffer and fail every write of it
    and of the items put around it, which were lost at close."""
    import os

    with ThreadedServer(":memory:", max_frame=65536) as server:
        url = f"{server.url}/jobs"
        with spoolq.SyncQueue.create(url, durability=durability) as q:
            q.put("before")
            with pytest.raises(spoolq.protocol.FrameTooLarge, match="nothing was stored"):
                q.put(os.urandom(100_000))
            with pytest.raises(spoolq.protocol.FrameTooLarge):
                q.put_many(["in the same put_many", os.urandom(100_000)])
            q.put("after")
        with spoolq.SyncQueue.create(url) as q:
            assert q.get_many(10, timeout=0.2) == ["before", "after"]


@pytest.mark.parametrize("durability", ["commit", "buffer"])
def test_puts_larger_than_a_frame_in_all_go_in_several_requests(durability: str) -> None:
    """A put_many, or the puts a buffer or a group commit writes together, larger than the
    server's max_frame: each record fits a request, so all are stored, in order."""
    import os

    items = [os.urandom(5000) for _ in range(40)]  # 200 KB, random: no compression
    with ThreadedServer(":memory:", max_frame=65536) as server:
        url = f"{server.url}/jobs"
        with spoolq.SyncQueue.create(url, durability=durability) as q:
            q.put_many(items[:20])
            for item in items[20:]:
                q.put(item)
        with spoolq.SyncQueue.create(url) as q:
            assert q.get_many(40, timeout=1) == items


def test_a_record_as_large_as_check_records_allows_is_stored() -> None:
    import re

    with ThreadedServer(":memory:", max_frame=65536) as server:
        engine = RemoteEngine(f"{server.url}/jobs")
        try:
            with pytest.raises(spoolq.protocol.FrameTooLarge) as refused:
                engine.check_records("jobs", [bytes(70_000)])
            found = re.search(r"room for a record of (\d+)", str(refused.value))
            assert found is not None
            room = int(found.group(1))
            assert 65536 - 200 < room < 65536
            engine.check_records("jobs", [bytes(room)])
            with pytest.raises(spoolq.protocol.FrameTooLarge):
                engine.check_records("jobs", [bytes(room + 1)])
            engine.append("jobs", [bytes(room), b"x"], [room, 1], 1.0)
            assert [len(r.data) for r in engine.take("jobs", 5, 2.0, None)] == [room, 1]
        finally:
            engine.close()


def test_a_record_the_server_takes_comes_back_with_the_default_max_reply() -> None:
    """A server with a --max-frame above 16 MiB took a put of 17 MiB, and every get of a
    client with the default settings then raised ConfigurationError, the record stuck at
    the head of the queue: by default a client accepts replies as large as the server's
    frames."""
    import os

    big = os.urandom(17 * 2**20)
    with ThreadedServer(":memory:", max_frame=20 * 2**20) as server:
        url = f"{server.url}/jobs"
        with spoolq.SyncQueue.create(url, serializer="raw", compressor="none") as q:
            q.put(big)
            q.put(b"after")
            assert q.get(timeout=5) == big
            assert q.get(timeout=5) == b"after"
        limited = RemoteEngine(url, max_reply=2**20)  # one given still bounds replies
        try:
            limited.append("jobs", [big], [len(big)], 1.0)
            with pytest.raises(spoolq.ConfigurationError, match="max_reply"):
                limited.take("jobs", 1, 2.0, None)
            assert limited.counts("jobs").ready == 1
        finally:
            limited.close()
