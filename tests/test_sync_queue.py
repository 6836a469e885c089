"""SyncQueue parity with queue.Queue, on every engine."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import pytest

import spoolq
from spoolq import SyncQueue

from .waiting import getter_thread


@pytest.fixture
def q(path: str) -> Iterator[SyncQueue[object]]:
    with SyncQueue.create(path) as handle:
        yield handle


def test_fifo_order_and_sizes(q: SyncQueue[object]) -> None:
    assert q.empty() and q.qsize() == 0
    for i in range(10):
        q.put(i)
    assert q.qsize() == 10 and not q.empty() and not q.full()
    assert [q.get() for _ in range(10)] == list(range(10))
    assert q.empty()


def test_items_of_every_cbor_type_round_trip(q: SyncQueue[object]) -> None:
    items: list[object] = [None, True, 1, -2**70, 1.5, "text", b"bytes", [1, [2]],
                           {"a": {"b": [1, 2]}}, "x" * 10_000]
    q.put_many(items)
    assert q.get_many(len(items)) == items


def test_get_nowait_on_empty_raises_standard_empty(q: SyncQueue[object]) -> None:
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(spoolq.Empty):
        q.get(block=False)


def test_get_timeout(q: SyncQueue[object]) -> None:
    start = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    assert 0.18 <= time.monotonic() - start < 2
    with pytest.raises(ValueError):
        q.get(timeout=-1)


def test_negative_timeouts_are_refused_where_queue_queue_refuses_them(path: str) -> None:
    with SyncQueue.create(path) as q:
        q.put("a", timeout=-1)  # no maxsize: a put never waits, so the timeout is not read
        q.put_many(["b"], timeout=-1)
        assert q.get_many(2) == ["a", "b"]
        q.put("a")
        with pytest.raises(ValueError):
            q.get(timeout=-1)  # even with an item ready
        assert q.get_nowait() == "a"
    with SyncQueue.create(path, name="bounded", maxsize=5) as q:
        with pytest.raises(ValueError):
            q.put("b", timeout=-1)
        with pytest.raises(ValueError):
            q.put_many(["b"], timeout=-1)
        assert q.qsize() == 0
    stdlib: queue.Queue[str] = queue.Queue()
    stdlib.put("a", timeout=-1)
    with pytest.raises(ValueError):
        stdlib.get(timeout=-1)
    with pytest.raises(ValueError):
        queue.Queue(maxsize=5).put("b", timeout=-1)


def test_maxsize_blocks_and_times_out(path: str) -> None:
    with SyncQueue.create(path, maxsize=2) as q:
        q.put(1)
        q.put(2)
        assert q.full() and q.maxsize == 2
        with pytest.raises(queue.Full):
            q.put_nowait(3)
        start = time.monotonic()
        with pytest.raises(spoolq.Full):
            q.put(3, timeout=0.2)
        assert time.monotonic() - start >= 0.18
        threading.Timer(0.1, q.get).start()
        q.put(3, timeout=5)
        assert q.get_many(2) == [2, 3]


def test_blocked_get_wakes_on_put(q: SyncQueue[object]) -> None:
    threading.Timer(0.1, q.put, args=("late",)).start()
    start = time.monotonic()
    assert q.get(timeout=5) == "late"
    assert time.monotonic() - start < 2


def test_task_done_and_join(q: SyncQueue[object]) -> None:
    with pytest.raises(ValueError):
        q.task_done()
    q.put_many([1, 2, 3])
    done: list[int] = []

    def worker() -> None:
        for _ in range(3):
            done.append(q.get())  # type: ignore[arg-type]
            time.sleep(0.01)
            q.task_done()

    threading.Thread(target=worker).start()
    q.join()
    assert done == [1, 2, 3]
    with pytest.raises(ValueError):
        q.task_done()


def test_join_counts_items_present_at_open(disk_path: str) -> None:
    with SyncQueue.create(disk_path) as q:
        q.put_many(["a", "b"])
    with SyncQueue.create(disk_path) as q:
        assert q.stats["unfinished"] == 2
        q.get()
        q.task_done()
        q.get()
        q.task_done()
        q.join()


def test_get_many_semantics(q: SyncQueue[object]) -> None:
    q.put_many(range(5))
    assert q.get_many(2) == [0, 1]
    assert q.get_many(None) == [2, 3, 4]
    threading.Timer(0.05, q.put, args=(9,)).start()
    assert q.get_many(3, timeout=0.5) == [9]
    with pytest.raises(queue.Empty):
        q.get_many(3, timeout=0.05)
    with pytest.raises(ValueError):
        q.get_many(0)


def test_get_many_waits_for_n(q: SyncQueue[object]) -> None:
    def feed() -> None:
        for i in range(3):
            time.sleep(0.03)
            q.put(i)

    threading.Thread(target=feed).start()
    assert q.get_many(3, timeout=5) == [0, 1, 2]


def test_peek_removes_nothing(q: SyncQueue[object]) -> None:
    assert q.peek() == []
    q.put_many(["a", "b", "c"])
    assert q.peek() == ["a"]
    assert q.peek(5, offset=1) == ["b", "c"]
    assert q.qsize() == 3


def test_shutdown(q: SyncQueue[object]) -> None:
    q.put_many([1, 2])
    q.shutdown()
    with pytest.raises(spoolq.QueueShutDown):
        q.put(3)
    assert q.get() == 1
    assert q.get() == 2
    with pytest.raises(spoolq.QueueShutDown):
        q.get()


def test_shutdown_immediate_wakes_waiters_and_keeps_items(disk_path: str) -> None:
    with SyncQueue.create(disk_path) as q:
        t, errors = getter_thread(q, timeout=10)
        time.sleep(0.05)
        q.put("kept")
        t.join(5)
        assert not t.is_alive() and errors == []
        q.put("kept-too")
        q.shutdown(immediate=True)
        with pytest.raises(spoolq.QueueShutDown):
            q.get()
    with SyncQueue.create(disk_path) as q:
        assert q.qsize() == 1


def test_many_producers_and_consumers_lose_and_duplicate_nothing(path: str) -> None:
    with SyncQueue.create(path) as q:
        n_producers, per = 4, 250
        got: list[int] = []
        lock = threading.Lock()

        def produce(base: int) -> None:
            for i in range(per):
                q.put(base + i)

        def consume() -> None:
            while True:
                try:
                    item = q.get(timeout=1)
                except queue.Empty:
                    return
                with lock:
                    got.append(item)  # type: ignore[arg-type]

        threads = [threading.Thread(target=produce, args=(p * per,)) for p in range(n_producers)]
        threads += [threading.Thread(target=consume) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(got) == list(range(n_producers * per))


def test_serialization_error_leaves_queue_unchanged(q: SyncQueue[object]) -> None:
    q.put("before")
    with pytest.raises(spoolq.SerializationError, match="pickle"):
        q.put(object())
    with pytest.raises(TypeError):
        q.put_many(["ok", object()])
    assert q.qsize() == 1
    assert q.get_many(None) == ["before"]


def test_stats_keys_and_compression(q: SyncQueue[object]) -> None:
    s = q.stats
    assert s["count"] == 0 and s["compression_ratio_pct"] is None
    q.put_many([{"text": "spool " * 200}] * 3)
    s = q.stats
    assert s["count"] == 3 and s["puts"] == 3
    assert s["raw_size_bytes"] > s["compressed_size_bytes"] > 0
    assert 0 < s["compression_ratio_pct"] < 100
    q.get()
    assert q.stats["gets"] == 1 and q.stats["count"] == 2


def test_stats_sizes_survive_reopen(disk_path: str) -> None:
    with SyncQueue.create(disk_path) as q:
        q.put_many(["spool " * 100, "queue " * 50])
        before = q.stats
    with SyncQueue.create(disk_path) as q:
        after = q.stats
    for key in ("count", "raw_size_bytes", "compressed_size_bytes", "compression_ratio_pct"):
        assert after[key] == before[key]


def test_closed_queue_refuses_work(path: str) -> None:
    q = SyncQueue.create(path)
    q.close()
    q.close()
    with pytest.raises((spoolq.ClosedError, spoolq.QueueShutDown)):
        q.put(1)
    with pytest.raises(spoolq.ClosedError):
        q.peek()


def test_bad_settings_are_configuration_errors(path: str) -> None:
    for kwargs in ({"maxsize": 1.5}, {"durability": "sometimes"}, {"name": ""},
                   {"max_attempts": 0}, {"serializer": "yaml"}, {"compressor": "rar"}):
        with pytest.raises(spoolq.ConfigurationError):
            SyncQueue.create(path, **kwargs)  # type: ignore[arg-type]


def test_a_negative_maxsize_is_no_limit_as_in_queue_queue(path: str) -> None:
    with SyncQueue.create(path, maxsize=-1) as q:
        q.put_many(range(5), block=False)
        q.put(5, block=False)
        assert (q.maxsize, q.full(), q.qsize()) == (0, False, 6)


async def test_a_negative_maxsize_is_no_limit_as_in_asyncio_queue(path: str) -> None:
    q = await spoolq.Queue.create(path, maxsize=-3)
    try:
        await q.put_many(range(5))
        q.put_nowait(5)
        assert (q.maxsize, q.full(), q.qsize()) == (0, False, 6)
    finally:
        await q.aclose()


def test_a_get_that_races_close_raises_shutdown(path: str) -> None:
    """close() in another thread between the get's look at the counts and its take: the
    get raises QueueShutDown (as a get after close does), not an engine error."""
    q: SyncQueue[object] = SyncQueue.create(path)
    q.put("item")
    core = q._core
    seen = core.ready_hint

    def close_first() -> int:
        core.ready_hint = seen  # type: ignore[method-assign]
        q.close()
        return 1

    core.ready_hint = close_first  # type: ignore[method-assign]
    with pytest.raises(spoolq.QueueShutDown):
        q.get()
