"""Batcher: flush by size, by interval and on exit; failures re-queue in order; crashes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import spoolq
from spoolq import Batcher, Queue


class Sink:
    def __init__(self, fail_times: int = 0) -> None:
        self.batches: list[list[object]] = []
        self.fail_times = fail_times
        self.calls = 0

    async def __call__(self, batch: list[object]) -> None:
        self.calls += 1
        if self.calls <= self.fail_times:
            raise ConnectionError("sink down")
        self.batches.append(batch)


async def test_flush_by_size(path: str) -> None:
    sink = Sink()
    async with Batcher(sink, queue=path, max_batch_size=3, flush_interval=60) as b:
        await b.add_many([1, 2, 3, 4])
        for _ in range(200):  # the ack after the sink: a commit, slow on a busy disk
            if b.stats["flushes"] and b.stats["queued"] == 1:
                break
            await asyncio.sleep(0.025)
        assert sink.batches == [[1, 2, 3]]
        assert b.stats["queued"] == 1 and b.stats["running"]
    assert sink.batches == [[1, 2, 3], [4]]


async def test_flush_by_interval(path: str) -> None:
    sink = Sink()
    async with Batcher(sink, queue=path, max_batch_size=100, flush_interval=0.1) as b:
        await b.add("lonely")
        await asyncio.sleep(0.4)
        assert sink.batches == [["lonely"]]
        for _ in range(100):  # the ack after the sink: a commit, slow on a busy disk
            if b.stats["flushes"]:
                break
            await asyncio.sleep(0.05)
        stats = b.stats
        assert stats["flushes"] == 1 and stats["items"] == 1 and stats["last_flush_time"]
    assert not b.stats["running"]


async def test_explicit_flush(path: str) -> None:
    sink = Sink()
    async with Batcher(sink, queue=path, max_batch_size=2, flush_interval=60) as b:
        await b.add(1)
        assert await b.flush(force=False)
        assert sink.batches == []
        assert await b.flush()
        assert sink.batches == [[1]]


async def test_failed_flush_requeues_in_order_and_retries(path: str) -> None:
    sink = Sink(fail_times=2)
    async with Batcher(sink, queue=path, max_batch_size=2, flush_interval=0.05,
                       retry_delay=0.05) as b:
        await b.add_many(["a", "b", "c"])
        for _ in range(300):
            if len(sink.batches) == 2:
                break
            await asyncio.sleep(0.01)
        assert sink.batches == [["a", "b"], ["c"]]
        assert b.stats["failures"] == 2


async def test_uses_an_open_queue_and_leaves_it_open(path: str) -> None:
    sink = Sink()
    async with await Queue.create(path, name="events") as q:
        async with Batcher(sink, queue=q, flush_interval=60) as b:
            await b.add({"e": 1})
        assert sink.batches == [[{"e": 1}]]
        await q.put("still open")


def test_bad_settings() -> None:
    with pytest.raises(spoolq.ConfigurationError):
        Batcher(Sink(), queue=":memory:", max_batch_size=0)


ADDER = textwrap.dedent("""
    import asyncio, sys, spoolq
    async def never(batch):
        raise AssertionError("no flush expected")
    async def main():
        b = spoolq.Batcher(never, queue=sys.argv[1], max_batch_size=1000, flush_interval=3600)
        await b.start()
        for i in range(50):
            await b.add(i)
            print(i, flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
""")


async def test_kill_between_add_and_flush_loses_nothing(tmp_path: Path, disk_engine: str) -> None:
    from .conftest import queue_path

    path = queue_path(tmp_path, disk_engine)
    with subprocess.Popen([sys.executable, "-c", ADDER, path], stdout=subprocess.PIPE,
                          text=True) as child:
        assert child.stdout is not None
        for line in child.stdout:
            if int(line) == 49:
                break
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    sink = Sink()
    async with Batcher(sink, queue=path, max_batch_size=1000, flush_interval=60) as b:
        for _ in range(200):
            if b.stats["items"]:
                break
            await asyncio.sleep(0.01)
        assert b.stats["items"] == 50
    assert sink.batches == [list(range(50))]


async def test_a_plain_function_sink_gets_each_batch_once(path: str) -> None:
    batches: list[list[object]] = []

    def sink(batch: list[object]) -> None:
        batches.append(batch)

    async with Batcher(sink, queue=path, max_batch_size=2, flush_interval=60,
                       retry_delay=0.01) as b:
        await b.add_many([1, 2, 3])
        assert await b.flush()
        assert b.stats["failures"] == 0 and b.stats["flushes"] == 2
    assert batches == [[1, 2], [3]]


@pytest.mark.parametrize(("setting", "value"), [
    ("max_batch_size", 0), ("max_batch_size", -1), ("max_batch_size", 2.5),
    ("max_batch_size", "10"), ("max_batch_size", True),
    ("flush_interval", 0), ("flush_interval", -1.0), ("flush_interval", float("nan")),
    ("flush_interval", float("inf")), ("flush_interval", "5"),
    ("retry_delay", 0), ("retry_delay", float("nan")), ("retry_delay", float("inf")),
    ("max_retry_delay", float("nan")), ("max_retry_delay", float("inf")),
    ("max_retry_delay", 0.1),  # below retry_delay
    ("lease_ttl", 0), ("lease_ttl", -5), ("lease_ttl", float("inf")), ("lease_ttl", None),
    ("name", ""), ("name", 7),
    ("queue", 42),
])
async def test_bad_settings_name_the_setting_and_leave_the_queue_alone(
        setting: str, value: object, tmp_path: Path) -> None:
    async with await Queue.create(str(tmp_path / "q.sqlite")) as q:
        await q.put("kept")
        kwargs: dict[str, object] = {"queue": q, "retry_delay": 0.5, setting: value}
        with pytest.raises(spoolq.ConfigurationError, match=setting):
            Batcher(Sink(), **kwargs)  # type: ignore[arg-type]
        assert await q.peek(5) == ["kept"] and q.qsize() == 1


def test_a_sink_that_is_not_callable_is_refused() -> None:
    with pytest.raises(spoolq.ConfigurationError, match="on_flush"):
        Batcher(["not", "callable"], queue=":memory:")  # type: ignore[arg-type]


async def test_stop_flushes_even_while_a_retry_is_waiting(tmp_path: Path) -> None:
    sink = Sink(fail_times=1)
    async with await Queue.create(str(tmp_path / "q.sqlite")) as q:
        async with Batcher(sink, queue=q, flush_interval=60, retry_delay=30) as b:
            await b.add_many(["a", "b"])
            assert not await b.flush()
            await b.add("c")
        # The failed batch is sent again as it was; "c" follows in a batch of its own.
        assert sink.batches == [["a", "b"], ["c"]]
        assert q.qsize() == 0 and b.stats["failures"] == 1 and b.stats["flushes"] == 2


async def test_an_explicit_flush_calls_the_sink_again_at_once(path: str) -> None:
    sink = Sink(fail_times=1)
    async with Batcher(sink, queue=path, flush_interval=60, retry_delay=30) as b:
        await b.add(1)
        assert not await b.flush()
        assert await b.flush()
        assert sink.batches == [[1]]



async def test_a_failed_explicit_flush_is_retried_after_retry_delay(path: str) -> None:
    sink = Sink(fail_times=1)
    async with Batcher(sink, queue=path, flush_interval=60, retry_delay=0.05) as b:
        await b.add(1)
        assert not await b.flush()
        for _ in range(100):
            if b.stats["flushes"]:
                break
            await asyncio.sleep(0.01)
        assert sink.batches == [[1]] and b.stats["flushes"] == 1


async def test_a_sink_that_hangs_is_cancelled_after_lease_ttl_and_retried(path: str) -> None:
    calls: list[list[object]] = []
    hang = asyncio.Event()

    async def sink(batch: list[object]) -> None:
        calls.append(batch)
        if len(calls) == 1:
            await hang.wait()

    async with Batcher(sink, queue=path, max_batch_size=10, flush_interval=60,
                       lease_ttl=0.2) as b:
        await b.add_many([1, 2])
        assert not await asyncio.wait_for(b.flush(), 1.0)
        assert b.stats["failures"] == 1 and b.stats["queued"] == 2
        await b.add(3)
        assert await b.flush()
    assert calls == [[1, 2], [1, 2], [3]]


async def test_add_when_not_running_raises_and_stores_nothing(tmp_path: Path) -> None:
    sink = Sink()
    async with await Queue.create(str(tmp_path / "q.sqlite")) as q:
        b = Batcher(sink, queue=q, flush_interval=60)
        with pytest.raises(RuntimeError, match="not running"):
            await b.add(1)
        async with b:
            await b.add(2)
        with pytest.raises(RuntimeError, match="not running"):
            await b.add_many([3, 4])
        assert q.qsize() == 0 and sink.batches == [[2]]
    owned = Batcher(sink, queue=str(tmp_path / "owned.sqlite"), flush_interval=60)
    async with owned:
        pass
    with pytest.raises(RuntimeError, match="not running"):
        await owned.add(5)


HUNG_FLUSHER = textwrap.dedent("""
    import asyncio, sys, spoolq
    async def hang(batch):
        print(batch, flush=True)
        await asyncio.sleep(60)
    async def main():
        b = spoolq.Batcher(hang, queue=sys.argv[1], max_batch_size=10, flush_interval=3600)
        await b.start()
        await b.add_many(range(25))
        await asyncio.sleep(60)
    asyncio.run(main())
""")


async def test_kill_during_a_flush_keeps_the_batch_in_the_file(tmp_path: Path,
                                                                disk_engine: str) -> None:
    from .conftest import queue_path

    path = queue_path(tmp_path, disk_engine)
    with subprocess.Popen([sys.executable, "-c", HUNG_FLUSHER, path], stdout=subprocess.PIPE,
                          text=True) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == str(list(range(10)))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    async with await Queue.create(path, name="batcher") as q:
        assert await q.peek(30) == list(range(25))
    sink = Sink()
    async with Batcher(sink, queue=path, max_batch_size=10, flush_interval=60) as b:
        await b.add(25)
    assert [item for batch in sink.batches for item in batch] == list(range(26))
    assert sink.batches[0] == list(range(10))


async def test_stats_after_stop_count_what_the_sink_left(path: str) -> None:
    sink = Sink(fail_times=10)
    async with Batcher(sink, queue=path, flush_interval=60) as b:
        await b.add_many([1, 2, 3])
    stats = b.stats
    assert stats["queued"] == 3 and stats["failures"] == 1 and not stats["running"]


async def test_the_timer_flushes_items_another_handle_put_in_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    sink = Sink()
    async with Batcher(sink, queue=path, flush_interval=0.05) as b:
        with spoolq.SyncQueue.create(path, name="batcher") as producer:
            producer.put("from another process")
        for _ in range(100):
            if b.stats["items"]:
                break
            await asyncio.sleep(0.01)
        assert sink.batches == [["from another process"]] and b.stats["items"] == 1


async def test_items_added_after_a_failure_come_after_the_failed_batch(path: str) -> None:
    sink = Sink(fail_times=1)
    async with Batcher(sink, queue=path, max_batch_size=3, flush_interval=60,
                       retry_delay=0.05) as b:
        await b.add_many([1, 2])
        assert not await b.flush()
        await b.add_many([3, 4, 5, 6])
        for _ in range(100):
            if len(sink.batches) == 3:
                break
            await asyncio.sleep(0.01)
        assert sink.batches == [[1, 2], [3, 4, 5], [6]]


async def test_concurrent_starts_open_one_queue_and_one_flusher(tmp_path: Path) -> None:
    sink = Sink()
    b = Batcher(sink, queue=str(tmp_path / "q.sqlite"), name="twice", flush_interval=60)
    await asyncio.gather(b.start(), b.start())
    try:
        flushers = [t for t in asyncio.all_tasks() if t.get_name() == "spoolq-batcher-twice"]
        assert len(flushers) == 1
        queue = b.queue
        await b.add(1)
    finally:
        await b.stop()
    assert sink.batches == [[1]] and all(t.done() for t in flushers)
    with pytest.raises(spoolq.ClosedError):
        await queue.put(2)


async def test_a_sink_raising_cancelled_error_is_a_failed_flush(path: str) -> None:
    calls: list[list[object]] = []

    async def sink(batch: list[object]) -> None:
        calls.append(batch)
        if len(calls) == 1:  # e.g. a client whose own request future was cancelled
            raise asyncio.CancelledError

    async with Batcher(sink, queue=path, max_batch_size=2, flush_interval=60,
                       retry_delay=0.01) as b:
        await b.add_many([1, 2])
        for _ in range(100):
            if len(calls) == 2:
                break
            await asyncio.sleep(0.01)
        assert calls == [[1, 2], [1, 2]]
        assert b.stats["failures"] == 1 and b.stats["running"]


async def test_cancelling_a_flush_cancels_the_sink_and_keeps_the_batch(path: str) -> None:
    started, sink_cancelled = asyncio.Event(), asyncio.Event()

    async def sink(batch: list[object]) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            sink_cancelled.set()
            raise

    async with Batcher(sink, queue=path, flush_interval=60) as b:
        await b.add_many([1, 2])
        flushing = asyncio.create_task(b.flush())
        await started.wait()
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        await asyncio.wait_for(sink_cancelled.wait(), 1)
        assert await b.queue.peek(5) == [1, 2] and b.stats["queued"] == 2
        await b.queue.purge()


class SlowSink(Sink):
    async def __call__(self, batch: list[object]) -> None:
        await asyncio.sleep(0.1)
        await super().__call__(batch)


async def test_a_second_stop_waits_for_the_first_to_finish(path: str) -> None:
    sink = SlowSink()
    b = Batcher(sink, queue=path, flush_interval=60)
    await b.start()
    await b.add(1)
    first = asyncio.create_task(b.stop())
    await asyncio.sleep(0)
    await b.stop()
    assert sink.batches == [[1]] and first.done()
    await first


async def test_a_stop_cancelled_by_a_timeout_still_flushes_and_closes(path: str) -> None:
    sink = SlowSink()
    b = Batcher(sink, queue=path, flush_interval=60)
    await b.start()
    await b.add(1)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(b.stop(), 0.02)
    await b.stop()
    assert sink.batches == [[1]] and not b.stats["running"]
    with pytest.raises(RuntimeError):
        b.queue  # noqa: B018 - the queue the Batcher opened is closed


async def test_start_during_a_stop_starts_after_it(path: str) -> None:
    sink = SlowSink()
    b = Batcher(sink, queue=path, flush_interval=60)
    await b.start()
    await b.add(1)
    stopping = asyncio.create_task(b.stop())
    await asyncio.sleep(0)
    await b.start()
    assert stopping.done() and b.stats["running"]
    await b.add(2)
    await b.stop()
    assert sink.batches == [[1], [2]]
