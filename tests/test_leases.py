"""Leases: ack, nack, ttl, attempts, dead letters and crashes, on every engine, both queues."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import spoolq
from spoolq import Queue, SyncQueue


def test_lease_hides_item_until_acked(path: str) -> None:
    with SyncQueue.create(path) as q:
        q.put_many(["a", "b"])
        msg = q.lease(ttl=30)
        assert (msg.item, msg.attempts) == ("a", 1)
        assert msg.enqueued_at <= time.time()
        assert q.qsize() == 1 and q.stats["leased"] == 1
        assert q.get() == "b"
        with pytest.raises(spoolq.Empty):
            q.get_nowait()
        q.ack(msg)
        assert q.stats["leased"] == 0 and q.stats["acks"] == 1


def test_nack_returns_item_to_its_place(path: str) -> None:
    with SyncQueue.create(path) as q:
        q.put_many([1, 2, 3])
        msg = q.lease()
        q.nack(msg)
        again = q.lease()
        assert (again.item, again.attempts) == (1, 2)
        q.ack(again)
        assert q.get_many(None) == [2, 3]


def test_nack_with_delay(path: str) -> None:
    with SyncQueue.create(path) as q:
        q.put_many([1, 2])
        q.nack(q.lease(), delay=0.3)
        assert q.get(timeout=1) == 2
        start = time.monotonic()
        assert q.get(timeout=3) == 1
        assert time.monotonic() - start > 0.1


def test_expired_lease_is_delivered_again(path: str) -> None:
    with SyncQueue.create(path, poll_interval=0.02) as q:
        q.put("job")
        first = q.lease(ttl=0.1)
        second = q.lease(timeout=3, ttl=30)
        assert second.item == "job" and second.attempts == 2
        with pytest.raises(spoolq.LeaseError, match=r"expired|delivered again"):
            q.ack(first)
        q.ack(second)
        assert q.stats["leased"] == 0


def test_ack_twice_and_foreign_messages(path: str) -> None:
    with SyncQueue.create(path) as q, SyncQueue.create(
            path if path != ":memory:" else ":memory:", name="other") as other:
        q.put("x")
        msg = q.lease()
        q.ack(msg)
        with pytest.raises(spoolq.LeaseError):
            q.ack(msg)
        with pytest.raises(spoolq.LeaseError, match="another queue"):
            other.ack(msg)
        with pytest.raises(TypeError):
            q.ack("not a message")  # type: ignore[arg-type]


def test_max_attempts_moves_to_dead_letters(path: str) -> None:
    with SyncQueue.create(path, max_attempts=2) as q:
        q.put_many(["poison", "fine"])
        q.nack(q.lease())
        q.nack(q.lease())
        assert q.stats["dead"] == 1
        assert q.peek(5, dead=True) == ["poison"]
        assert q.get() == "fine"
        assert q.requeue_dead() == 1
        assert q.stats["dead"] == 0
        again = q.lease()
        assert (again.item, again.attempts) == ("poison", 1)
        q.ack(again)
        assert q.purge(dead=True) == 0


def test_leased_context_manager(path: str) -> None:
    with SyncQueue.create(path) as q:
        q.put_many(["ok", "fails"])
        with q.leased() as item:
            assert item == "ok"
        with pytest.raises(RuntimeError), q.leased() as item:
            raise RuntimeError(item)
        msg = q.lease()
        assert (msg.item, msg.attempts) == ("fails", 2)


def test_lease_many_and_ack_many(path: str) -> None:
    with SyncQueue.create(path) as q:
        q.put_many(range(10))
        msgs = q.lease_many(4)
        assert [m.item for m in msgs] == [0, 1, 2, 3]
        q.ack(*msgs)
        assert q.qsize() == 6 and q.stats["leased"] == 0


def test_ack_counts_as_task_done(path: str) -> None:
    with SyncQueue.create(path) as q:
        q.put("x")
        q.ack(q.lease())
        q.join()


def test_close_releases_this_handles_leases(disk_path: str) -> None:
    with SyncQueue.create(disk_path) as q:
        q.put("x")
        q.lease()
    with SyncQueue.create(disk_path) as q:
        msg = q.lease(block=False)
        assert (msg.item, msg.attempts) == ("x", 2)


async def test_async_leases(path: str) -> None:
    async with await Queue.create(path, max_attempts=3) as q:
        await q.put_many(["a", "b"])
        msg = await q.lease(ttl=30)
        assert msg.item == "a"
        await q.nack(msg)
        msgs = await q.lease_many(5)
        assert [(m.item, m.attempts) for m in msgs] == [("a", 2), ("b", 1)]
        await q.ack(*msgs)
        with pytest.raises(spoolq.Empty):
            await q.lease(timeout=0.05)
        await q.put("c")
        with pytest.raises(ValueError, match="boom"):
            async with q.leased() as item:
                raise ValueError(f"boom {item}")
        async with q.leased() as item:
            assert item == "c"
        assert q.stats["leased"] == 0 and q.empty()


async def test_cancelled_lease_loses_nothing(path: str) -> None:
    async with await Queue.create(path) as q:
        for _ in range(10):
            task = asyncio.create_task(q.lease())
            await asyncio.sleep(0)
            await q.put("x")
            await asyncio.sleep(0)
            task.cancel()
            try:
                msg = await task
                await q.ack(msg)
            except asyncio.CancelledError:
                msg = await q.lease(timeout=2)
                assert msg.attempts == 1, "an undelivered lease must not count as an attempt"
                await q.ack(msg)
            assert q.stats["leased"] == 0 and q.empty()


LEASER = textwrap.dedent("""
    import sys, spoolq
    q = spoolq.SyncQueue.create(sys.argv[1])
    for _ in range(int(sys.argv[2])):
        msg = q.lease(ttl=3600)
        print(msg.item, flush=True)
    print("holding", flush=True)
    import time; time.sleep(60)
""")


@pytest.mark.parametrize("use_async", [False, True], ids=["SyncQueue", "Queue"])
def test_leases_of_a_killed_process_come_back_to_a_consumer_already_running(
        shared_path: str, use_async: bool) -> None:
    """A consumer that was running when another process on this host died with leases
    gets their items within seconds, not at the end of their hour-long ttl."""
    with SyncQueue.create(shared_path) as q:
        q.put_many(range(3))
    with subprocess.Popen([sys.executable, "-c", LEASER, shared_path, "2"],
                          stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        lines = [child.stdout.readline().strip() for _ in range(3)]
        assert lines == ["0", "1", "holding"]

        def consume(q: SyncQueue[int]) -> list[tuple[int, int]]:
            assert q.get(timeout=5) == 2
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            started = time.monotonic()
            msgs = [q.lease(timeout=10) for _ in range(2)]
            assert time.monotonic() - started < 6
            return [(m.item, m.attempts) for m in msgs]

        async def consume_async() -> list[tuple[int, int]]:
            async with await Queue.create(shared_path) as q:
                assert await q.get() == 2
                child.send_signal(signal.SIGKILL)
                await asyncio.to_thread(child.wait, 10)
                started = time.monotonic()
                msgs = [await asyncio.wait_for(q.lease(), 10) for _ in range(2)]
                assert time.monotonic() - started < 6
                return [(m.item, m.attempts) for m in msgs]

        if use_async:
            got = asyncio.run(consume_async())
        else:
            with SyncQueue.create(shared_path) as q:
                got = consume(q)
    assert got == [(0, 2), (1, 2)]


def test_leases_of_a_killed_process_come_back_on_reopen(shared_path: str) -> None:
    with SyncQueue.create(shared_path) as q:
        q.put_many(range(10))
    with subprocess.Popen([sys.executable, "-c", LEASER, shared_path, "4"],
                          stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        taken = []
        for line in child.stdout:
            if line.strip() == "holding":
                break
            taken.append(int(line))
        # a live process's leases are never stolen
        with SyncQueue.create(shared_path) as q:
            assert q.stats["leased"] == 4
            assert q.lease(block=False).item == 4
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert taken == [0, 1, 2, 3]
    with SyncQueue.create(shared_path) as q:
        assert q.stats["leased"] == 0
        msgs = q.lease_many(10, block=False)
        assert [(m.item, m.attempts) for m in msgs] == [
            (0, 2), (1, 2), (2, 2), (3, 2), (4, 2), (5, 1), (6, 1), (7, 1), (8, 1), (9, 1)]
