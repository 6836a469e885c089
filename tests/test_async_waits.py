"""How many threads async gets take while an engine long-polls for them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import spoolq

from .servers import ServerProcess

WAITERS = 200


def _wait_threads() -> int:
    return sum(t.name.startswith("spoolq-wait") and t.is_alive()
               for t in threading.enumerate())


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(":memory:") as proc:
        yield proc


async def test_many_blocked_gets_share_one_long_poll_thread(server: ServerProcess) -> None:
    """Each blocked get held a thread of a pool of 128 for its long-poll, so 200 consumer
    tasks took all 128 (and the rest queued behind them). The gets of one queue handle
    now share one long-poll, and every one of them still gets its item."""
    url = f"{server.url}/shared"
    before = _wait_threads()
    async with await spoolq.Queue.create(url) as q:
        gets = [asyncio.create_task(q.get()) for _ in range(WAITERS)]
        await asyncio.sleep(0.5)
        assert not any(g.done() for g in gets)
        assert _wait_threads() - before <= 2
        async with await spoolq.Queue.create(url) as producer:
            await producer.put_many(list(range(WAITERS)))
        got = await asyncio.wait_for(asyncio.gather(*gets), 30)
    assert sorted(got) == list(range(WAITERS))


async def test_shared_long_poll_keeps_each_get_to_its_own_timeout(
        server: ServerProcess) -> None:
    """Gets sharing a long-poll each end at their own timeout; a get that starts later
    still gets an item put after the others gave up."""
    url = f"{server.url}/timeouts"
    async with await spoolq.Queue.create(url) as q:
        started = time.monotonic()

        async def timed(timeout: float) -> float:
            with pytest.raises(spoolq.Empty):
                await q.get_many(1, timeout=timeout)
            return time.monotonic() - started

        ends = await asyncio.gather(timed(0.3), timed(0.8), timed(1.5))
        assert 0.25 <= ends[0] < 0.8
        assert 0.75 <= ends[1] < 1.4
        assert 1.45 <= ends[2] < 2.5
        late = asyncio.create_task(q.get_many(1, timeout=10))
        await asyncio.sleep(0.2)
        async with await spoolq.Queue.create(url) as producer:
            await producer.put("late")
        assert await late == ["late"]


async def test_a_cancelled_get_does_not_end_the_long_poll_of_the_others(
        server: ServerProcess) -> None:
    url = f"{server.url}/cancel"
    async with await spoolq.Queue.create(url) as q:
        first = asyncio.create_task(q.get())
        second = asyncio.create_task(q.get_many(1, timeout=20))
        await asyncio.sleep(0.3)
        first.cancel()
        await asyncio.sleep(0.3)
        async with await spoolq.Queue.create(url) as producer:
            await producer.put("kept")
        assert await asyncio.wait_for(second, 20) == ["kept"]
        assert first.cancelled()
        assert q.qsize() == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_get_with_a_timeout_keeps_it_when_the_server_stalls(kind: str) -> None:
    """A blocked get re-read the counts before its long-poll; on a server that stalled
    (stopped, its connections still accepted) that call took the engine's timeout (10 s
    here, 30 s by default) instead of what was left of the get's own."""
    with ServerProcess(":memory:") as server:
        url = f"{server.url}/stalls"
        options = {"timeout": 10.0, "connect_timeout": 10.0}

        def stalled_get(get: Callable[[], object]) -> float:
            time.sleep(0.2)  # the counts are due to be read again
            with server.stalled():
                start = time.monotonic()
                with pytest.raises(spoolq.Unavailable):
                    get()
                return time.monotonic() - start

        if kind == "sync":
            with spoolq.SyncQueue.create(url, engine_options=options) as q:
                took = stalled_get(lambda: q.get(timeout=1))
                q.put("after")
                assert q.get(timeout=5) == "after"
        else:
            async def run() -> float:
                async with await spoolq.Queue.create(url, engine_options=options) as q:
                    loop = asyncio.get_running_loop()
                    spent = await loop.run_in_executor(None, stalled_get, lambda: (
                        asyncio.run_coroutine_threadsafe(q.get_many(1, timeout=1), loop)
                        .result()))
                    await q.put("after")
                    assert await q.get_many(1, timeout=5) == ["after"]
                    return spent
            took = asyncio.run(run())
        assert took < 3.0


def test_a_get_cut_short_by_a_stall_keeps_the_leases_of_its_handle() -> None:
    """The count read a get bounds by its own deadline closed the connection when the
    server stalled for a moment past it; the server then gave back every lease delivered
    on that connection, and the job leased before was delivered twice."""
    with ServerProcess(":memory:") as server:
        url = f"{server.url}/stall-leases"
        with spoolq.SyncQueue.create(url) as q:
            q.put("job")
            msg = q.lease(ttl=600)
            time.sleep(0.2)  # the counts are due to be read again
            with server.stalled():
                with pytest.raises(spoolq.Unavailable):
                    q.get(timeout=0.05)
                time.sleep(0.5)
            q.ack(msg)
            with spoolq.SyncQueue.create(url) as other, pytest.raises(spoolq.Empty):
                other.lease(timeout=0.5)
            q.put("after")
            assert q.get(timeout=5) == "after"  # the connection serves later calls


def test_a_get_keeps_its_timeout_while_another_thread_waits_for_a_stalled_server() -> None:
    """A put of another thread held the handle's lock while it waited for the stalled
    server; the get's count read waited for that lock up to the engine's timeout (6 s
    here) instead of its own."""
    with ServerProcess(":memory:") as server:
        url = f"{server.url}/stall-lock"
        with spoolq.SyncQueue.create(url, engine_options={"timeout": 6.0}) as q:
            time.sleep(0.2)  # the counts are due to be read again
            with server.stalled():
                # It waits for the server, and is written once the server goes on.
                putting = threading.Thread(target=q.put, args=("stuck",))
                putting.start()
                time.sleep(0.1)
                start = time.monotonic()
                with pytest.raises((spoolq.Empty, spoolq.Unavailable)):
                    q.get(timeout=0.5)
                took = time.monotonic() - start
            putting.join(20)
            assert took < 2.5
            assert q.get(timeout=5) == "stuck"
