"""Asynchronous peers from PyPI, each used through its documented API."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from measurements.contestants.base import GET_DEADLINE_S, AsyncContestant, Unavailable, load


class AioDiskQueue(AsyncContestant):
    """aiodiskqueue's ``Queue`` on one of its storage engines."""

    def __init__(self, engine: str) -> None:
        self.lib = load("aiodiskqueue")
        self.engine = engine

    async def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        engine_cls = getattr(self.lib.engines, self.engine, None)
        if engine_cls is None:
            raise Unavailable(f"aiodiskqueue engine {self.engine} (optional dependency missing)")
        self.q: Any = await self.lib.Queue.create(
            tmpdir / "queue.dat", cls_storage_engine=engine_cls
        )

    async def put(self, item: Any) -> None:
        await self.q.put(item)

    async def get(self) -> Any:
        return await self.q.get()

    async def close(self) -> None:
        # The queue has no close(): every operation opens and closes its file.
        self.q = None


class QuezAsyncQueue(AsyncContestant):
    """quez's ``AsyncCompressedQueue`` with its defaults (pickle + zlib)."""

    def __init__(self) -> None:
        self.lib = load("quez")

    async def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        self.q: Any = self.lib.AsyncCompressedQueue()

    async def put(self, item: Any) -> None:
        await self.q.put(item)

    async def get(self) -> Any:
        return await self.q.get()

    async def close(self) -> None:
        self.q = None


class BequeBatcher(AsyncContestant):
    """beque's in-memory batcher; a get takes the items it handed to ``on_flush``.

    When nothing has been handed over yet, a get forces a flush.
    """

    def __init__(self) -> None:
        self.lib = load("beque")

    async def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        self.delivered: deque[Any] = deque()
        self.b: Any = self.lib.Beque(
            on_flush=self._on_flush, max_batch_size=100, flush_interval=1.0
        )
        await self.b.start()

    async def _on_flush(self, batch: list[Any]) -> None:
        self.delivered.extend(batch)

    async def put(self, item: Any) -> None:
        await self.b.add(item)

    async def put_many(self, items: Sequence[Any]) -> None:
        await self.b.add_many(list(items))

    async def get(self) -> Any:
        deadline = asyncio.get_running_loop().time() + GET_DEADLINE_S
        while not self.delivered:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("no item arrived")
            await self.b.flush(force=True)
            if not self.delivered:
                await asyncio.sleep(0.001)
        return self.delivered.popleft()

    async def close(self) -> None:
        await self.b.stop()
