"""join() when other handles and processes consume the items a handle waits for."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import spoolq

from .conftest import SHARED_ENGINES, queue_path

CONSUMER = textwrap.dedent("""
    import sys, spoolq
    path, n = sys.argv[1], int(sys.argv[2])
    with spoolq.SyncQueue.create(path) as q:
        for _ in range(n):
            q.get(timeout=10)
            q.task_done()
""")

LEASER = textwrap.dedent("""
    import sys, spoolq
    path = sys.argv[1]
    with spoolq.SyncQueue.create(path) as q:
        msg = q.lease(timeout=10, ttl=60)
        print("leased", flush=True)
        sys.stdin.readline()
        q.ack(msg)
    print("acked", flush=True)
""")


def _consume(path: str, n: int) -> None:
    subprocess.run([sys.executable, "-c", CONSUMER, path, str(n)], check=True, timeout=30)


def _join_within(q: spoolq.SyncQueue[object], seconds: float) -> bool:
    """Whether q.join() returns within ``seconds`` (it goes on in a daemon thread if not)."""
    t = threading.Thread(target=q.join, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive()


@pytest.fixture(params=SHARED_ENGINES)
def path(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return queue_path(tmp_path, str(request.param))


def test_producer_join_returns_once_another_process_consumed_its_items(path: str) -> None:
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(range(5))
        assert q.stats["unfinished"] == 5
        _consume(path, 5)
        assert _join_within(q, 5)
        assert q.stats["unfinished"] == 0


def test_consumer_join_returns_when_another_process_took_the_items_present_at_open(
        path: str) -> None:
    with spoolq.SyncQueue.create(path) as producer:
        producer.put_many(range(10))
    with spoolq.SyncQueue.create(path) as q:
        assert q.stats["unfinished"] == 10
        got = [q.get() for _ in range(5)]
        _consume(path, 5)
        assert not _join_within(q, 0.3)  # its own five gets are not done yet
        for _ in got:
            q.task_done()
        assert _join_within(q, 5)


def test_join_waits_while_another_process_holds_a_lease(path: str) -> None:
    with spoolq.SyncQueue.create(path) as q:
        q.put("job")
        with subprocess.Popen([sys.executable, "-c", LEASER, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) as leaser:
            assert leaser.stdout is not None and leaser.stdin is not None
            assert leaser.stdout.readline().strip() == "leased"
            assert not _join_within(q, 0.5)  # leased elsewhere, not acked: not finished
            assert q.stats["unfinished"] == 1
            leaser.stdin.write("\n")
            leaser.stdin.flush()
            assert leaser.stdout.readline().strip() == "acked"
            assert leaser.wait(10) == 0
        assert _join_within(q, 5)


def test_join_of_another_handle_in_the_same_process(path: str) -> None:
    with spoolq.SyncQueue.create(path) as producer, spoolq.SyncQueue.create(path) as consumer:
        producer.put_many(["a", "b"])
        assert consumer.get_many(2, timeout=5) == ["a", "b"]
        assert _join_within(producer, 5)
        assert consumer.stats["unfinished"] == 2  # the consumer still owes its task_done
        consumer.task_done()
        consumer.task_done()
        assert _join_within(consumer, 1)


def test_join_still_waits_for_this_handles_own_gets(path: str) -> None:
    with spoolq.SyncQueue.create(path) as q:
        q.put("x")
        assert q.get() == "x"
        time.sleep(0.1)  # past the poll interval: join re-reads the file, which is empty
        assert not _join_within(q, 0.3)
        q.task_done()
        assert _join_within(q, 1)


def test_async_producer_join_returns_once_another_process_consumed_its_items(
        path: str) -> None:
    async def main() -> None:
        async with await spoolq.Queue.create(path) as q:
            await q.put_many(range(3))
            consumer = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CONSUMER, path, "3")
            assert await asyncio.wait_for(consumer.wait(), 30) == 0
            await asyncio.wait_for(q.join(), 5)
            assert q.stats["unfinished"] == 0

    asyncio.run(main())


def test_async_join_waits_for_its_own_gets(path: str) -> None:
    async def main() -> None:
        async with await spoolq.Queue.create(path) as q:
            await q.put("x")
            assert await q.get() == "x"
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(q.join(), 0.3)
            q.task_done()
            await asyncio.wait_for(q.join(), 1)

    asyncio.run(main())
