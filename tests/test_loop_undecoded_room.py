"""With ``calls_on_loop``, a get on the loop that takes records needing a zstd dictionary
another handle trained decodes them on the worker. Until then they are still counted,
by ``qsize()`` and by a put's check for room: a put waiting for room found it in that
gap, and a cancelled get then gave its record back on top, leaving the queue past its
``maxsize`` (4 items of 3)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import spoolq
from spoolq import Queue

from .test_loopedge_calls_on_loop import _docs
from .threadstate import WorkerHeld


async def test_records_decoding_on_the_worker_keep_their_room(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    docs = _docs(103)
    async with await Queue[bytes].create(path, serializer="raw", compressor="zstd-dict",
                                         calls_on_loop=True, maxsize=3,
                                         poll_interval=0.02) as q:
        with spoolq.SyncQueue[bytes].create(path, serializer="raw",
                                            compressor="zstd-dict") as other:
            other.put_many(docs[:100])  # trains a dictionary this handle lacks
            for doc in docs[100:]:
                other.put(doc)
        assert len(await q.get_many(100)) == 100
        assert q.qsize() == 3
        async with WorkerHeld(q):
            getting = asyncio.ensure_future(q.get())
            await asyncio.sleep(0.05)
            assert q.qsize() == 3  # its record is decoding on the worker: still counted
            putting = asyncio.ensure_future(q.put(b"new"))
            await asyncio.sleep(0.2)
            assert not putting.done()  # no room while the get may give its record back
            getting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await getting
        await asyncio.sleep(0.1)
        assert q.qsize() <= 3
        putting.cancel()
        await asyncio.gather(putting, return_exceptions=True)
