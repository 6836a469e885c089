"""An async get_many(n) holding part of its batch when the server goes away: the items it
holds were removed on the server, so it waits for the server like a get, and hands out what
it holds when its timeout passes, rather than raise and lose them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from spoolq import Queue

from .servers import ServerProcess


async def test_an_async_get_many_holding_part_of_its_batch_rides_out_a_server_restart(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    server = ServerProcess(path)
    port = server.port
    async with await Queue.create(f"{server.url}/jobs") as q:
        await q.put("a")
        getter = asyncio.ensure_future(q.get_many(3, timeout=20))
        await asyncio.sleep(0.5)  # it holds "a" and waits for two more
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(1.0)
        assert not getter.done()
        with ServerProcess(path, port=port):
            async with await Queue.create(f"{server.url}/jobs") as other:
                await other.put_many(["b", "c"])
                assert await asyncio.wait_for(getter, 20) == ["a", "b", "c"]


async def test_an_async_get_many_holding_part_of_its_batch_returns_it_when_the_server_stays_away(
        tmp_path: Path) -> None:
    server = ServerProcess(str(tmp_path / "q.sqlite"))
    async with await Queue.create(f"{server.url}/jobs") as q:
        await q.put("a")
        getter = asyncio.ensure_future(q.get_many(3, timeout=2))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.stop)
        assert await asyncio.wait_for(getter, 20) == ["a"]
