"""How waiting gets and puts of the queues behave when their engine long-polls (a spoolq
server, PostgreSQL) and when the server stalls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

import spoolq

from .servers import ServerProcess, ThreadedServer


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer(":memory:") as srv:
        yield srv


async def test_a_shutdown_as_a_get_starts_its_long_poll_ends_the_get(
        server: ThreadedServer) -> None:
    """The shared long-poll starts on a task of its own: a shutdown() between the get's
    look at the shutdown flag and that task's first step found no wait to cancel, and
    the get slept through the whole long-poll (5 s) before it saw the shutdown."""
    async with await spoolq.Queue.create(f"{server.url}/race") as q:
        get = asyncio.create_task(q.get())
        await asyncio.sleep(0)  # the get runs until it waits; the poll's task has not run
        q.shutdown()
        start = time.monotonic()
        with pytest.raises(spoolq.QueueShutDown):
            await asyncio.wait_for(get, 10)
        assert time.monotonic() - start < 1.0


def _stalled_call(server: ServerProcess, call: Callable[[], object],
                  raises: type[BaseException]) -> float:
    """Seconds ``call`` took to raise ``raises`` while ``server`` is stopped."""
    time.sleep(0.2)  # the counts are due to be read again
    with server.stalled():
        start = time.monotonic()
        with pytest.raises(raises):
            call()
        return time.monotonic() - start


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_put_with_a_timeout_on_a_full_queue_keeps_it_when_the_server_stalls(
        kind: str) -> None:
    """Before refusing a put that found no room, the queue reads the counts once more;
    on a server that stalled that read took the engine's timeout (10 s here, 30 s by
    default) instead of what was left of the put's own."""
    with ServerProcess(":memory:") as server:
        url = f"{server.url}/full"
        options = {"timeout": 10.0, "connect_timeout": 10.0}
        if kind == "sync":
            with spoolq.SyncQueue.create(url, maxsize=1, engine_options=options) as q:
                q.put("fills it")
                took = _stalled_call(server, lambda: q.put("more", timeout=1),
                                     spoolq.Unavailable)
                assert q.get(timeout=5) == "fills it"
        else:
            async def run() -> float:
                async with await spoolq.Queue.create(url, maxsize=1,
                                                     engine_options=options) as q:
                    await q.put("fills it")
                    loop = asyncio.get_running_loop()
                    spent = await loop.run_in_executor(None, _stalled_call, server, lambda: (
                        asyncio.run_coroutine_threadsafe(
                            q.put_many(["more"], timeout=1), loop).result()),
                        spoolq.Unavailable)
                    assert await q.get_many(1, timeout=5) == ["fills it"]
                    return spent
            took = asyncio.run(run())
        assert took < 3.0
