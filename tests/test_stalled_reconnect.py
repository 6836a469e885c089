"""A get with a timeout whose handle lost its connection to a server that then stalled:
connecting again is bounded by the get's deadline, not by the engine's connect_timeout.
Nothing was sent on the new connection yet, so giving up takes nothing from the queue."""

from __future__ import annotations

import asyncio
import time

import pytest

import spoolq

from .servers import ServerProcess

OPTIONS = {"timeout": 1.0, "connect_timeout": 10.0}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_get_reconnecting_to_a_stalled_server_keeps_its_timeout(kind: str) -> None:
    with ServerProcess(":memory:") as server:
        url = f"{server.url}/stalls"

        def stall_and_get(put: object, get: object) -> float:
            with server.stalled():
                with pytest.raises(spoolq.Unavailable):
                    put()  # type: ignore[operator]  # the engine's timeout: its link goes
                start = time.monotonic()
                with pytest.raises(spoolq.Unavailable):
                    get()  # type: ignore[operator]
                return time.monotonic() - start

        if kind == "sync":
            with spoolq.SyncQueue.create(url, engine_options=OPTIONS) as q:
                q.put("ready")  # counted ready: the get goes straight to its take
                took = stall_and_get(lambda: q.put("lost?"), lambda: q.get(timeout=0.5))
                assert q.get(timeout=5) == "ready"
        else:
            async def run() -> float:
                async with await spoolq.Queue.create(url, engine_options=OPTIONS) as q:
                    await q.put("ready")
                    loop = asyncio.get_running_loop()

                    def call(coro_fn: object) -> object:
                        return asyncio.run_coroutine_threadsafe(
                            coro_fn(), loop).result()  # type: ignore[operator]

                    spent = await loop.run_in_executor(None, stall_and_get,
                                                       lambda: call(lambda: q.put("lost?")),
                                                       lambda: call(lambda: q.get_many(
                                                           1, timeout=0.5)))
                    assert await q.get_many(1, timeout=5) == ["ready"]
                    return spent
            took = asyncio.run(run())
        assert took < 3.0, f"the get took {took:.1f} s"
