"""The spoolq demo: put jobs, close, reopen in a new process, and find them all there.

Run it with ``python examples/demo.py`` (it writes into a temporary folder).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

import spoolq

REOPEN = """
import asyncio, json, sys, spoolq

async def main() -> None:
    async with await spoolq.Queue.create(sys.argv[1]) as q:
        print(f"  reopened: {q.qsize()} jobs waiting")
        first = await q.get_many(3)
        print(f"  first three: {first}")
        stats = {k: q.stats[k] for k in ("count", "gets", "raw_size_bytes",
                                         "compressed_size_bytes", "engine", "durability")}
        print(f"  stats now: {json.dumps(stats)}")

asyncio.run(main())
"""


async def produce(path: str) -> None:
    async with await spoolq.Queue.create(path) as q:
        await q.put_many({"job": i, "resize": f"photos/{i:05}.jpg", "sizes": [64, 256, 1024]}
                         for i in range(1000))
        stats = q.stats
        count, raw, stored = stats["count"], stats["raw_size_bytes"], \
            stats["compressed_size_bytes"]
        print(f"process 1 put {count} jobs ({raw} bytes serialized, {stored} stored) "
              f"into {path}")
        if stored >= raw:
            print(f"  (items this small are stored uncompressed, {(stored - raw) / count:.0f} "
                  f"bytes of header each; compressor=\"zstd-dict\" compresses them too)")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "jobs.sqlite")
        asyncio.run(produce(path))
        print("process 1 closed the queue; process 2 opens it:")
        subprocess.run([sys.executable, "-c", REOPEN, path], check=True)


if __name__ == "__main__":
    main()
