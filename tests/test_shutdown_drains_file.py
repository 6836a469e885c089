"""After shutdown(), gets drain what the file holds, not only what this handle last counted:
items another handle put before the shutdown, within this handle's poll interval."""

from __future__ import annotations

import asyncio
import time

import pytest

import spoolq

from .servers import ServerProcess


def _put_elsewhere(path: str, items: list[int]) -> None:
    with spoolq.SyncQueue.create(path) as other:
        other.put_many(items)


def test_sync_get_after_shutdown_drains_items_another_handle_put(shared_path: str) -> None:
    with spoolq.SyncQueue.create(shared_path, poll_interval=60.0) as q:
        assert q.qsize() == 0  # counted now; the next look at the file is a minute away
        _put_elsewhere(shared_path, [1, 2, 3])
        q.shutdown()
        assert [q.get(timeout=5), q.get_nowait(), q.get()] == [1, 2, 3]
        with pytest.raises(spoolq.QueueShutDown):
            q.get(timeout=5)


def test_sync_get_many_after_shutdown_hands_out_what_the_file_holds(shared_path: str) -> None:
    with spoolq.SyncQueue.create(shared_path, poll_interval=60.0) as q:
        assert q.qsize() == 0
        _put_elsewhere(shared_path, [0, 1, 2])
        q.shutdown()
        assert q.get_many(10, timeout=5) == [0, 1, 2]
        with pytest.raises(spoolq.QueueShutDown):
            q.get_many(10, timeout=5)


def test_async_get_after_shutdown_drains_items_another_handle_put(shared_path: str) -> None:
    async def main() -> None:
        q = await spoolq.Queue.create(shared_path, poll_interval=60.0)
        try:
            assert q.qsize() == 0
            await asyncio.to_thread(_put_elsewhere, shared_path, [1, 2, 3])
            q.shutdown()
            assert [await q.get(), await q.get(), await q.get()] == [1, 2, 3]
            with pytest.raises(spoolq.QueueShutDown):
                await q.get()
            with pytest.raises(spoolq.QueueShutDown):
                q.get_nowait()
        finally:
            await q.aclose()

    asyncio.run(main())


def test_async_get_many_after_shutdown_hands_out_what_the_file_holds(shared_path: str) -> None:
    async def main() -> None:
        q = await spoolq.Queue.create(shared_path, poll_interval=60.0)
        try:
            assert q.qsize() == 0
            await asyncio.to_thread(_put_elsewhere, shared_path, [0, 1, 2])
            q.shutdown()
            assert await q.get_many(10, timeout=5) == [0, 1, 2]
            with pytest.raises(spoolq.QueueShutDown):
                await q.get_many(10, timeout=5)
        finally:
            await q.aclose()

    asyncio.run(main())


def test_async_get_nowait_after_shutdown_drains_items_another_handle_put(
        shared_path: str) -> None:
    # get_nowait reads the file when this handle counts nothing ready; after shutdown it
    # does so too, rather than raise QueueShutDown over items the file still holds.
    async def main() -> None:
        q = await spoolq.Queue.create(shared_path, poll_interval=60.0)
        try:
            assert q.qsize() == 0
            await asyncio.to_thread(_put_elsewhere, shared_path, [1, 2])
            q.shutdown()
            assert [q.get_nowait(), q.get_nowait()] == [1, 2]
            with pytest.raises(spoolq.QueueShutDown):
                q.get_nowait()
        finally:
            await q.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["get", "get_nowait", "get_many"])
def test_sync_get_after_an_immediate_shutdown_raises_at_once_on_a_stalled_server(
        kind: str) -> None:
    # shutdown(immediate=True) makes gets raise at once: the look at the file's counts a
    # get takes after a plain shutdown is not for it, and on a server that stalled (its
    # connections accepted, nothing answered) it lasted the engine's timeout.
    with ServerProcess(":memory:") as server:
        options = {"timeout": 10.0, "connect_timeout": 10.0}
        with spoolq.SyncQueue.create(f"{server.url}/jobs", engine_options=options) as q:
            q.put("left")
            assert q.get(timeout=5) == "left"
            q.shutdown(immediate=True)
            call = {"get": lambda: q.get(timeout=8), "get_nowait": q.get_nowait,
                    "get_many": lambda: q.get_many(5, timeout=8)}[kind]
            with server.stalled():
                start = time.monotonic()
                with pytest.raises(spoolq.QueueShutDown):
                    call()
                took = time.monotonic() - start
    assert took < 1.0
