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


def test_a_get_waiting_for_its_handle_on_a_healthy_server_is_not_unavailable() -> None:
    """Only connecting again is bounded by a get's deadline: a get with an item ready that
    waits for another thread's slow call of the same handle (a large put_many, here held
    up by a paused server that comes back) takes its item, as before."""
    with ServerProcess(":memory:") as server:
        url = f"{server.url}/busy"
        with spoolq.SyncQueue.create(url, engine_options={"timeout": 10.0}) as q:
            q.put("ready")
            import os
            import signal
            import threading
            os.kill(server.proc.pid, signal.SIGSTOP)
            resume = threading.Timer(2.0, os.kill, (server.proc.pid, signal.SIGCONT))
            resume.start()
            putter = threading.Thread(target=q.put_many, args=(["later"] * 10,))
            putter.start()  # holds the handle's locks until the server answers
            time.sleep(0.1)
            try:
                assert q.get(timeout=0.05) == "ready"
            finally:
                resume.join()
                putter.join()
            assert q.get_many(10, timeout=5) == ["later"] * 10


def test_an_async_get_behind_a_slow_put_of_its_handle_takes_its_item() -> None:
    """The async queue's take waits behind the put on the queue's worker thread: on a
    connection that is up, the get's deadline does not refuse the take that follows."""
    import os
    import signal
    import threading

    async def run(url: str, pid: int) -> list[str]:
        async with await spoolq.Queue.create(url, engine_options={"timeout": 10.0}) as q:
            await q.put("ready")
            os.kill(pid, signal.SIGSTOP)
            resume = threading.Timer(2.0, os.kill, (pid, signal.SIGCONT))
            resume.start()
            put = asyncio.ensure_future(q.put_many(["later"] * 10))
            await asyncio.sleep(0.1)
            try:
                got: list[str] = await q.get_many(1, timeout=0.05)
            finally:
                await put
                resume.join()
            return got

    with ServerProcess(":memory:") as server:
        assert asyncio.run(run(f"{server.url}/busy", server.proc.pid)) == ["ready"]
