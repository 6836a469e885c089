"""A spoolq server inside an asyncio program, and a client talking to it.

``start_server`` serves every queue of a file on a free port of 127.0.0.1;
clients reach a queue with ``spoolq://HOST:PORT/NAME``. Run it with
``python examples/server.py``: it serves a temporary SQLite file, puts and
gets through the server, and shuts the server down cleanly.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import spoolq
from spoolq.server import start_server


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "served.sqlite"
        async with await start_server(path, port=0) as server:
            print(f"serving {path.name} on {server.url}")
            url = f"{server.url}/thumbnails"
            async with await spoolq.Queue.create(url, name="thumbnails") as q:
                await q.put_many({"photo": f"img-{n:03}.jpg", "size": 256} for n in range(20))
                first = await q.get()
                rest = await q.get_many(19, timeout=1)
                print(f"got {first} and {len(rest)} more; stats: count={q.stats['count']} "
                      f"engine={q.stats['engine']}")
        print("server stopped; the queue file is closed")


if __name__ == "__main__":
    asyncio.run(main())
