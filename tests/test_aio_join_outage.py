"""An async join() while the queue's server is away: it waits for the items it counts, as
a blocked get does, rather than raise the server's absence to the producer awaiting it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from spoolq import Queue

from .servers import ServerProcess


async def test_join_waits_through_a_server_restart_and_sees_the_items_taken_meanwhile(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    server = ServerProcess(path)
    port = server.port
    async with await Queue.create(f"{server.url}/jobs") as q:
        await q.put_many(["a", "b"])
        assert await q.get() == "a"
        joining = asyncio.ensure_future(q.join())
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(1.0)  # some 20 polls of the counts, none of which can be read
        assert not joining.done()
        q.task_done()  # "a"; "b" is still in the file
        await asyncio.sleep(0.2)
        assert not joining.done()
        with ServerProcess(path, port=port):
            async with await Queue.create(f"{server.url}/jobs") as other:
                assert await other.get() == "b"
            await asyncio.wait_for(joining, 20)  # the file holds nothing now
