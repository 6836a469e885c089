"""Batcher: a restart on a new event loop, a sink cancelled mid-batch, leases that run out
while the sink works, and two Batchers draining one file."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import spoolq
from spoolq import Batcher


def test_a_batcher_stopped_on_one_event_loop_restarts_on_another(tmp_path: Path) -> None:
    got: list[list[object]] = []

    async def sink(batch: list[object]) -> None:
        got.append(batch)

    b = Batcher(sink, queue=str(tmp_path / "q.sqlite"), flush_interval=0.02)

    async def run(item: str) -> None:
        async with b:
            await b.add(item)
            for _ in range(200):
                if b.stats["items"] and got[-1] == [item]:
                    break
                await asyncio.sleep(0.005)
            assert b.stats["running"]

    asyncio.run(run("first"))
    asyncio.run(run("second"))  # a second asyncio.run: a CLI command, a test
    assert got == [["first"], ["second"]] and b.stats["queued"] == 0


async def test_a_running_batcher_refuses_a_start_from_another_event_loop(
        tmp_path: Path) -> None:
    got: list[list[object]] = []

    async def sink(batch: list[object]) -> None:
        got.append(batch)

    async with Batcher(sink, queue=str(tmp_path / "q.sqlite"), flush_interval=60) as b:
        with pytest.raises(RuntimeError, match="event loop"):
            await asyncio.to_thread(asyncio.run, b.start())
        await b.add(1)
        assert b.stats["running"]
    assert got == [[1]]


def test_a_batcher_never_stopped_on_an_ended_loop_starts_on_another(tmp_path: Path) -> None:
    got: list[list[object]] = []

    async def sink(batch: list[object]) -> None:
        got.append(batch)

    b = Batcher(sink, queue=str(tmp_path / "q.sqlite"), flush_interval=60)

    async def forget_to_stop() -> None:
        await b.start()
        await b.add("left")

    async def restart() -> None:
        async with b:
            await b.flush()

    asyncio.run(forget_to_stop())
    asyncio.run(restart())
    assert got == [["left"]] and b.stats["queued"] == 0 and not b.stats["running"]


async def test_a_cancelled_flush_waits_for_the_sink_to_end_before_the_next(
        path: str) -> None:
    running = 0
    overlapped = False
    started = asyncio.Event()
    calls: list[list[object]] = []

    async def sink(batch: list[object]) -> None:
        nonlocal running, overlapped
        overlapped = overlapped or running > 0
        running += 1
        calls.append(batch)
        try:
            if len(calls) == 1:
                started.set()
                await asyncio.sleep(60)
        finally:
            # A sink that cleans up on cancellation (rolls back, closes a connection).
            await asyncio.sleep(0.02)
            running -= 1

    async with Batcher(sink, queue=path, flush_interval=60) as b:
        await b.add_many([1, 2])
        flushing = asyncio.create_task(b.flush())
        await started.wait()
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        assert running == 0  # the cancelled call has ended when flush() returns
        assert await b.flush()
    assert calls == [[1, 2], [1, 2]] and not overlapped


async def test_a_flush_cancelled_twice_still_waits_for_the_sink_to_end(path: str) -> None:
    running = 0
    overlapped = False
    started, cleaning = asyncio.Event(), asyncio.Event()
    calls: list[list[object]] = []

    async def sink(batch: list[object]) -> None:
        nonlocal running, overlapped
        overlapped = overlapped or running > 0
        running += 1
        calls.append(batch)
        try:
            if len(calls) == 1:
                started.set()
                await asyncio.sleep(60)
        finally:
            cleaning.set()
            await asyncio.shield(asyncio.sleep(0.3))  # a clean-up that is not cut short
            running -= 1

    async with Batcher(sink, queue=path, flush_interval=60) as b:
        await b.add_many([1, 2])
        flushing = asyncio.create_task(b.flush())
        await started.wait()
        flushing.cancel()
        await cleaning.wait()
        flushing.cancel()  # impatient: a second cancellation while the sink cleans up
        with pytest.raises(asyncio.CancelledError):
            await flushing
        assert running == 0  # the cancelled call has ended when flush() returns
        assert await b.flush()
    assert calls == [[1, 2], [1, 2]] and not overlapped


async def test_a_sink_that_outlives_its_lease_is_a_flush_not_an_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "q.sqlite")
    again: list[object] = []

    def slow_sink(batch: list[object]) -> None:
        time.sleep(0.06)  # longer than lease_ttl: a plain function cannot be stopped
        # Another process sharing the file reaps the lease that ran out and takes the item.
        with spoolq.SyncQueue.create(path, name="batcher") as other:
            again.append(other.get_nowait())

    caplog.set_level(logging.WARNING, logger="spoolq")
    async with Batcher(slow_sink, queue=path, flush_interval=60, lease_ttl=0.05) as b:
        await b.add("x")
        assert await b.flush()
        stats = b.stats
        assert stats["flushes"] == 1 and stats["items"] == 1 and stats["failures"] == 0
    assert again == ["x"]
    assert any("lease" in r.getMessage() and r.name == "spoolq" for r in caplog.records)


HUNG_CHILD = textwrap.dedent("""
    import asyncio, sys, spoolq
    async def hang(batch):
        print(batch, flush=True)
        await asyncio.sleep(60)
    async def main():
        b = spoolq.Batcher(hang, queue=sys.argv[1], max_batch_size=5, flush_interval=3600,
                           lease_ttl=0.3)
        await b.start()
        await b.add_many(range(12))
        await asyncio.sleep(60)
    asyncio.run(main())
""")


async def test_two_batchers_on_one_file_share_the_items_of_one_killed_mid_batch(
        shared_path: str) -> None:
    got: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        got.append(batch)

    with subprocess.Popen([sys.executable, "-c", HUNG_CHILD, shared_path],
                          stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            line = await asyncio.to_thread(child.stdout.readline)
            assert line.strip() == str([0, 1, 2, 3, 4])
            # This Batcher starts once the child holds its batch, so that batch is known.
            async with Batcher(sink, queue=shared_path, max_batch_size=5,
                               flush_interval=0.02) as b:
                child.send_signal(signal.SIGKILL)
                child.wait(10)
                for _ in range(1000):
                    if b.stats["items"] == 12:
                        break
                    await asyncio.sleep(0.01)
        finally:
            child.kill()
            child.wait(10)
    # The running Batcher sends the later items, and the batch the killed process held
    # once its lease runs out or its owner is found dead, whichever comes first: every
    # item once, the killed batch whole.
    assert [0, 1, 2, 3, 4] in got
    assert sorted(i for batch in got for i in batch) == list(range(12))



async def test_a_sink_that_fails_for_ever_keeps_its_batch_after_a_thousand_failures(
        caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def down(batch: list[object]) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("sink down")

    caplog.set_level(logging.CRITICAL, logger="spoolq")  # not a thousand tracebacks
    async with await spoolq.Queue.create(":memory:") as q:
        async with Batcher(down, queue=q, flush_interval=60, retry_delay=0.01,
                           max_retry_delay=0.01) as b:
            await b.add_many(["a", "b"])
            for _ in range(1100):  # the backoff doubled past what a float holds
                assert not await b.flush()
            assert b.stats["failures"] == 1100 and b.stats["queued"] == 2
            await b.add("c")
        assert await q.peek(5) == ["a", "b", "c"] and q.stats["leased"] == 0
    assert calls == 1101  # stop() tried once more


async def test_a_flush_cancelled_after_its_lease_ran_out_ends_cancelled(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "q.sqlite")
    flushing: asyncio.Task[bool] | None = None
    again: list[object] = []

    async def sink(batch: list[object]) -> None:
        time.sleep(0.06)  # past lease_ttl, before the flush's own timer can run
        with spoolq.SyncQueue.create(path, name="batcher") as other:
            again.append(other.get_nowait())  # another process reaps the lease
        assert flushing is not None
        flushing.cancel()  # say, a timeout around flush()
        await asyncio.sleep(60)

    caplog.set_level(logging.WARNING, logger="spoolq")
    async with Batcher(sink, queue=path, flush_interval=60, lease_ttl=0.05) as b:
        await b.add("x")
        flushing = asyncio.create_task(b.flush())
        with pytest.raises(asyncio.CancelledError):
            await flushing
        assert again == ["x"] and b.stats["queued"] == 0
    assert any("lease" in r.getMessage() and r.name == "spoolq" for r in caplog.records)


async def test_adds_from_several_threads_through_the_loop_keep_each_threads_order(
        path: str) -> None:
    got: list[list[tuple[int, int]]] = []

    async def sink(batch: list[tuple[int, int]]) -> None:
        got.append(batch)

    async with Batcher(sink, queue=path, max_batch_size=7, flush_interval=60) as b:
        loop = asyncio.get_running_loop()

        def producer(t: int) -> None:
            for i in range(40):
                asyncio.run_coroutine_threadsafe(b.add((t, i)), loop).result(5)

        await asyncio.gather(*(asyncio.to_thread(producer, t) for t in range(4)))
        with pytest.raises(RuntimeError, match="event loop"):  # an add on another loop
            await asyncio.to_thread(asyncio.run, b.add((9, 9)))
    items = [tuple(item) for batch in got for item in batch]
    assert sorted(items) == [(t, i) for t in range(4) for i in range(40)]
    for t in range(4):
        assert [i for u, i in items if u == t] == list(range(40))


@pytest.mark.parametrize("logger", ["spoolq", print, 0])
def test_a_logger_that_is_not_one_is_refused(logger: object) -> None:
    with pytest.raises(spoolq.ConfigurationError, match="logger"):
        Batcher(lambda batch: None, queue=":memory:", logger=logger)  # type: ignore[arg-type]


async def test_a_logger_adapter_gets_the_sink_failures(
        caplog: pytest.LogCaptureFixture) -> None:
    def down(batch: list[object]) -> None:
        raise ConnectionError("sink down")

    adapter = logging.LoggerAdapter(logging.getLogger("spoolq.metrics"), {})
    caplog.set_level(logging.ERROR, logger="spoolq")
    async with await spoolq.Queue.create(":memory:") as q:
        async with Batcher(down, queue=q, flush_interval=60, logger=adapter) as b:
            await b.add(1)
            assert not await b.flush()
        assert await q.peek(5) == [1]
    assert any(r.name == "spoolq.metrics" and r.exc_info for r in caplog.records)


async def test_a_restart_flushes_what_the_last_stop_left_without_waiting_for_the_backoff(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    got: list[list[object]] = []

    async def sink(batch: list[object]) -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ConnectionError("sink down")
        got.append(batch)

    caplog.set_level(logging.CRITICAL, logger="spoolq")
    b = Batcher(sink, queue=str(tmp_path / "q.sqlite"), flush_interval=60, retry_delay=30)
    async with b:
        await b.add(1)
        assert not await b.flush()
    assert calls == 2 and b.stats["queued"] == 1  # stop() tried once more, in vain
    async with b:  # "items left by an earlier run are flushed right away"
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        assert got == [[1]]


async def test_an_add_waiting_for_room_in_a_bounded_queue_has_it_flushed(path: str) -> None:
    got: list[list[object]] = []

    async def sink(batch: list[object]) -> None:
        got.append(batch)

    async with await spoolq.Queue.create(path, maxsize=3) as q:
        async with Batcher(sink, queue=q, max_batch_size=10, flush_interval=60) as b:
            await asyncio.wait_for(b.add_many([0, 1]), 1)
            for i in range(2, 7):  # the queue holds 3 items: a batch of 10 never fills
                await asyncio.wait_for(b.add(i), 1)
            await asyncio.wait_for(b.add_many([7, 8, 9, 10]), 1)  # more than maxsize
        assert [i for batch in got for i in batch] == list(range(11))


def test_a_hanging_sink_is_cancelled_before_the_lease_of_its_batch_runs_out(
        tmp_path: Path) -> None:
    """Cancelled after the lease had run out, a sink overlapped with another consumer
    that could lease the same batch meanwhile."""
    from spoolq.engines import SQLiteEngine

    path = tmp_path / "q.sqlite"
    seen: dict[str, float] = {}

    async def sink(batch: list[object]) -> None:
        reader = SQLiteEngine(path, read_only=True)
        try:
            (leased,) = reader.peek_leased("default", 5)
        finally:
            reader.close()
        if "until" in seen:
            return  # the last flush of stop()
        seen["until"] = leased.until
        try:
            await asyncio.sleep(60)
        finally:
            seen["cancelled"] = time.time()

    async def main() -> None:
        q = await spoolq.Queue.create(path)
        try:
            await q.put("job")
            b = Batcher(sink, queue=q, flush_interval=3600, lease_ttl=1.0, retry_delay=60)
            async with b:
                assert await b.flush() is False  # the sink was cancelled: a failure
                assert b.stats["failures"] == 1
                assert q.qsize() == 1  # given back
        finally:
            await q.aclose()

    asyncio.run(main())
    assert seen["cancelled"] < seen["until"] - 0.02
