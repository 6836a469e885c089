"""SyncQueue, Queue and Batcher on PostgreSQL, with real consumer and producer processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import Batcher, Queue, SyncQueue

from .waiting import getter_thread

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")


@pytest.fixture
def opts(pg_schema: str) -> dict[str, Any]:
    """Queue settings that keep a test inside its own schema."""
    return {"engine_options": {"schema": pg_schema}, "poll_interval": 0.02}


# ---- parity -----------------------------------------------------------------------------

def test_sync_fifo_sizes_peek_and_stats(pg_url: str, opts: dict[str, Any]) -> None:
    with SyncQueue.create(pg_url, name="jobs", **opts) as q:
        assert q.empty() and q.stats["engine"] == "postgres"
        q.put({"n": 0})
        q.put_many([{"n": i} for i in range(1, 10)])
        assert q.qsize() == 10
        assert q.peek(2) == [{"n": 0}, {"n": 1}]
        assert q.get() == {"n": 0}
        assert q.get_many(3) == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert [x["n"] for x in q.get_many(None)] == list(range(4, 10))
        with pytest.raises(spoolq.Empty):
            q.get_nowait()
        with pytest.raises(spoolq.Empty):
            q.get(timeout=0.05)
        stats = q.stats
        assert (stats["count"], stats["leased"], stats["puts"], stats["gets"]) == (0, 0, 10, 10)


def test_sync_maxsize_and_a_second_handle(pg_url: str, opts: dict[str, Any]) -> None:
    with SyncQueue.create(pg_url, name="jobs", maxsize=2, **opts) as q, \
            SyncQueue.create(pg_url, name="jobs", **opts) as other:
        q.put_many(["a", "b"])
        with pytest.raises(spoolq.Full):
            q.put_nowait("c")
        assert other.get(timeout=2) == "a"
        q.put("c", timeout=2)
        assert other.get_many(2, timeout=2) == ["b", "c"]
        other.put("d")
        assert q.get(timeout=2) == "d"


def test_settings_are_stored_in_the_schema(pg_url: str, opts: dict[str, Any]) -> None:
    with SyncQueue.create(pg_url, name="jobs", serializer="json", **opts) as q:
        q.put([1, 2])
    with SyncQueue.create(pg_url, name="jobs", **opts) as q:
        assert q.stats["serializer"] == "json" and q.get() == [1, 2]
    with pytest.raises(spoolq.ConfigurationError, match="serializer"):
        SyncQueue.create(pg_url, name="jobs", serializer="pickle", **opts)


async def test_async_parity(pg_url: str, opts: dict[str, Any]) -> None:
    async with await Queue.create(pg_url, name="jobs", **opts) as q:
        getter = asyncio.create_task(q.get())
        await asyncio.sleep(0.05)
        assert not getter.done()
        await asyncio.gather(*(q.put(i) for i in range(20)))
        assert await asyncio.wait_for(getter, 5) == 0
        assert await q.get_many(19) == list(range(1, 20))
        with pytest.raises(asyncio.QueueEmpty):
            q.get_nowait()
        q.put_nowait("x")
        assert await q.peek() == ["x"]
        assert await q.get() == "x"
        for _ in range(21):
            q.task_done()
        await asyncio.wait_for(q.join(), 5)


# ---- leases and dead letters ------------------------------------------------------------

def test_shutdown_wakes_a_waiting_getter(pg_url: str, opts: dict[str, Any]) -> None:
    with SyncQueue.create(pg_url, name="jobs", **opts) as q:
        getter, errors = getter_thread(q, timeout=30)
        time.sleep(0.5)  # long enough to be listening for notifications
        start = time.monotonic()
        q.shutdown()
        getter.join(10)
        assert time.monotonic() - start < 1.0
        assert len(errors) == 1 and isinstance(errors[0], spoolq.QueueShutDown)


def test_lease_nack_ack_and_dead_letters(pg_url: str, opts: dict[str, Any]) -> None:
    with SyncQueue.create(pg_url, name="jobs", max_attempts=2, **opts) as q:
        q.put_many(["poison", "fine"])
        msg = q.lease(ttl=30)
        assert (msg.item, msg.attempts) == ("poison", 1)
        assert q.qsize() == 1 and q.stats["leased"] == 1
        q.nack(msg)
        q.nack(q.lease())
        assert q.stats["dead"] == 1 and q.peek(5, dead=True) == ["poison"]
        with q.leased() as item:
            assert item == "fine"
        assert q.requeue_dead() == 1
        again = q.lease()
        assert (again.item, again.attempts) == ("poison", 1)
        q.ack(again)
        assert q.stats["leased"] == 0 and q.stats["acks"] == 2


def test_a_late_ack_from_an_expired_lease_removes_nothing(pg_url: str,
                                                          opts: dict[str, Any]) -> None:
    with SyncQueue.create(pg_url, name="jobs", **opts) as slow, \
            SyncQueue.create(pg_url, name="jobs", **opts) as fast:
        slow.put("job")
        late = slow.lease(ttl=0.2)
        again = fast.lease(timeout=5, ttl=30)
        assert (again.item, again.attempts) == ("job", 2)
        with pytest.raises(spoolq.LeaseError, match="expired"):
            slow.ack(late)
        assert fast.stats["leased"] == 1
        fast.ack(again)
        assert fast.stats["leased"] == 0
        with pytest.raises(spoolq.Empty):
            fast.get_nowait()


def test_a_waiting_getter_sees_an_expired_lease_promptly(pg_url: str,
                                                        opts: dict[str, Any]) -> None:
    with SyncQueue.create(pg_url, name="jobs", **opts) as holder:
        holder.put("job")
        holder.lease(ttl=0.3)
        with SyncQueue.create(pg_url, name="jobs", **opts) as waiter:
            start = time.monotonic()
            assert waiter.get(timeout=4) == "job"
            assert time.monotonic() - start < 2.0


async def test_an_async_waiting_getter_sees_an_expired_lease_promptly(
        pg_url: str, opts: dict[str, Any]) -> None:
    async with await Queue.create(pg_url, name="jobs", **opts) as holder:
        await holder.put("job")
        await holder.lease(ttl=0.3)
        async with await Queue.create(pg_url, name="jobs", **opts) as waiter:
            start = time.monotonic()
            assert await asyncio.wait_for(waiter.get(), 4) == "job"
            assert time.monotonic() - start < 2.0


async def test_async_leases_and_close_releases(pg_url: str, opts: dict[str, Any]) -> None:
    async with await Queue.create(pg_url, name="jobs", **opts) as q:
        await q.put_many(["a", "b"])
        msg = await q.lease(ttl=30)
        await q.nack(msg)
        msgs = await q.lease_many(5)
        assert [(m.item, m.attempts) for m in msgs] == [("a", 2), ("b", 1)]
        await q.ack(msgs[0])
    async with await Queue.create(pg_url, name="jobs", **opts) as q:
        msg = await q.lease(timeout=2)
        assert (msg.item, msg.attempts) == ("b", 2)
        await q.ack(msg)


async def test_batcher_on_postgres(pg_url: str, opts: dict[str, Any]) -> None:
    flushed: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        flushed.append(batch)

    async with await Queue.create(pg_url, name="events", **opts) as q:
        async with Batcher(sink, queue=q, max_batch_size=5, flush_interval=60) as batcher:
            await batcher.add_many(range(12))
            await batcher.flush(force=True)
        assert [x for batch in flushed for x in batch] == list(range(12))
        assert q.qsize() == 0 and q.stats["leased"] == 0


# ---- processes --------------------------------------------------------------------------

PRODUCER = textwrap.dedent("""
    import sys, spoolq
    url, schema, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with spoolq.SyncQueue.create(url, name="jobs", engine_options={"schema": schema}) as q:
        for start in range(first, first + count, 500):
            q.put_many(range(start, min(start + 500, first + count)))
""")

CONSUMER = textwrap.dedent("""
    import os, sys, spoolq
    url, schema, done = sys.argv[1], sys.argv[2], sys.argv[3]
    with spoolq.SyncQueue.create(url, name="jobs", engine_options={"schema": schema},
                                 poll_interval=0.02) as q:
        while True:
            finished = os.path.exists(done)
            try:
                msgs = q.lease_many(200, timeout=0.2, ttl=300)
            except spoolq.Empty:
                if finished:
                    break
                continue
            q.ack(*msgs)
            sys.stdout.write("".join(f"{m.item} {m.attempts}\\n" for m in msgs))
""")


@pytest.mark.slow  # 8 to 17 s here, depending on the load of the machine
def test_four_consumers_two_producers_deliver_each_item_once(
        pg_url: str, pg_schema: str, tmp_path: Path) -> None:
    total, done = 50_000, tmp_path / "producers-done"
    outs = [tmp_path / f"consumer{i}.txt" for i in range(4)]
    files = [out.open("w") for out in outs]
    consumers = [subprocess.Popen([sys.executable, "-c", CONSUMER, pg_url, pg_schema, str(done)],
                                  stdout=f) for f in files]
    producers = [subprocess.Popen([sys.executable, "-c", PRODUCER, pg_url, pg_schema,
                                   str(i * total // 2), str(total // 2)]) for i in range(2)]
    try:
        for proc in producers:
            assert proc.wait(60) == 0
        done.touch()
        for proc in consumers:
            assert proc.wait(60) == 0
    finally:
        for proc in producers + consumers:
            proc.kill()
            proc.wait()
        for f in files:
            f.close()
    seen = [line.split() for out in outs for line in out.read_text().splitlines()]
    items = sorted(int(item) for item, _ in seen)
    assert items == list(range(total)), "an item was lost or delivered twice"
    assert {attempts for _, attempts in seen} == {"1"}
    assert all(out.stat().st_size > 0 for out in outs), "a consumer got no work"
    with SyncQueue.create(pg_url, name="jobs", engine_options={"schema": pg_schema}) as q:
        assert (q.qsize(), q.stats["leased"]) == (0, 0)


LEASER = textwrap.dedent("""
    import sys, time, spoolq
    q = spoolq.SyncQueue.create(sys.argv[1], name="jobs",
                                engine_options={"schema": sys.argv[2]})
    for _ in range(4):
        print(q.lease(ttl=float(sys.argv[3])).item, flush=True)
    print("holding", flush=True)
    time.sleep(60)
""")


def test_leases_of_a_killed_consumer_come_back_long_before_their_ttl(
        pg_url: str, pg_schema: str, opts: dict[str, Any]) -> None:
    """A handle in use takes back the leases of a process of its host that died within
    about two seconds, however long their ttl."""
    ttl = 60.0
    with SyncQueue.create(pg_url, name="jobs", **opts) as q:
        q.put_many(range(10))
        with subprocess.Popen([sys.executable, "-c", LEASER, pg_url, pg_schema, str(ttl)],
                              stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None
            taken = []
            for line in child.stdout:
                if line.strip() == "holding":
                    break
                taken.append(int(line))
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        killed_at = time.monotonic()
        assert taken == [0, 1, 2, 3]
        got: list[spoolq.Message[Any]] = []
        while len(got) < 10:
            got += q.lease_many(10 - len(got), timeout=10)
        assert time.monotonic() - killed_at < 5.0
        assert sorted((m.item, m.attempts) for m in got) == \
            [(i, 2) for i in range(4)] + [(i, 1) for i in range(4, 10)]
        q.ack(*got)
        with pytest.raises(spoolq.Empty):
            q.lease(timeout=0.2)
        q._core.refresh()
        assert (q.stats["count"], q.stats["leased"]) == (0, 0)
