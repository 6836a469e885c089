"""A Batcher writing events into a SQLite table, 50 rows per transaction.

Events are durable as soon as ``add`` returns; if the process dies before a
flush, the next start flushes them.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from pathlib import Path

import spoolq


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "analytics.db")
        db.execute("CREATE TABLE events (user INTEGER, action TEXT)")

        async def write_rows(batch: list[dict[str, object]]) -> None:
            with db:
                db.executemany("INSERT INTO events VALUES (:user, :action)", batch)

        async with spoolq.Batcher(write_rows, queue=Path(tmp) / "events.sqlite",
                                  max_batch_size=50, flush_interval=1.0) as batcher:
            for i in range(120):
                await batcher.add({"user": i % 9, "action": "click"})
        rows = db.execute("SELECT count(*) FROM events").fetchone()[0]
        print(f"{rows} rows written in {batcher.stats['flushes']} flushes")
        db.close()


if __name__ == "__main__":
    asyncio.run(main())
