"""spoolq through its public API: ``SyncQueue``, ``Queue`` and ``Batcher``.

The engine is chosen by the path's suffix, as a user would; the durability
is passed to ``create``. When spoolq is not importable (constructor) or an
engine is not there yet (``setup``), :class:`Unavailable` is raised and the
row says so.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from measurements.contestants.base import (
    GET_DEADLINE_S,
    AsyncContestant,
    Contestant,
    Unavailable,
)

SUFFIX = {"sqlite": "sqlite", "lmdb": "lmdb", "dbm": "dbm", "pickle": "pickle"}


def _import() -> ModuleType:
    try:
        import spoolq
    except Exception as exc:  # any failure means "not usable yet"
        raise Unavailable(f"import spoolq: {type(exc).__name__}: {exc}") from exc
    return spoolq


def _path(tmpdir: Path, engine: str) -> str:
    if engine == "memory":
        return ":memory:"
    if engine not in SUFFIX:
        raise Unavailable(f"unknown engine {engine}")
    return str(tmpdir / f"queue.{SUFFIX[engine]}")


def _create_kwargs(durability: str | None, serializer: str | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {} if durability is None else {"durability": durability}
    if serializer is not None:
        kwargs["serializer"] = serializer
    return kwargs


class SpoolqSync(Contestant):
    """``spoolq.SyncQueue`` on one engine at one durability."""

    def __init__(self, engine: str, durability: str | None, serializer: str | None = None) -> None:
        self.spoolq = _import()
        self.engine = engine
        self.durability = durability
        self.serializer = serializer

    def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        path = _path(tmpdir, self.engine)
        try:
            self.q: Any = self.spoolq.SyncQueue.create(
                path, **_create_kwargs(self.durability, self.serializer))
        except Exception as exc:
            raise Unavailable(f"SyncQueue.create({path!r}): {type(exc).__name__}: {exc}") from exc

    def put(self, item: Any) -> None:
        self.q.put(item)

    def get(self) -> Any:
        return self.q.get(timeout=GET_DEADLINE_S)

    def put_many(self, items: Sequence[Any]) -> None:
        self.q.put_many(list(items))

    def get_many(self, n: int) -> list[Any]:
        out: list[Any] = []
        while len(out) < n:
            out.extend(self.q.get_many(n - len(out), timeout=GET_DEADLINE_S))
        return out

    def close(self) -> None:
        self.q.close()


class SpoolqAsync(AsyncContestant):
    """``spoolq.Queue`` (asyncio) on one engine at one durability."""

    def __init__(self, engine: str, durability: str | None, serializer: str | None = None,
                 calls_on_loop: bool = False) -> None:
        self.spoolq = _import()
        self.engine = engine
        self.durability = durability
        self.serializer = serializer
        self.calls_on_loop = calls_on_loop

    async def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        path = _path(tmpdir, self.engine)
        kwargs = _create_kwargs(self.durability, self.serializer)
        if self.calls_on_loop:
            kwargs["calls_on_loop"] = True
        try:
            self.q: Any = await self.spoolq.Queue.create(path, **kwargs)
        except Exception as exc:
            raise Unavailable(f"Queue.create({path!r}): {type(exc).__name__}: {exc}") from exc

    async def put(self, item: Any) -> None:
        await self.q.put(item)

    async def get(self) -> Any:
        return await self.q.get()

    async def put_many(self, items: Sequence[Any]) -> None:
        await self.q.put_many(list(items))

    async def get_many(self, n: int) -> list[Any]:
        out: list[Any] = []
        while len(out) < n:
            out.extend(await self.q.get_many(n - len(out), timeout=GET_DEADLINE_S))
        return out

    async def close(self) -> None:
        await self.q.aclose()


class SpoolqBatcher(AsyncContestant):
    """``spoolq.Batcher`` on a sqlite file; a get takes what ``on_flush`` received.

    When nothing has been handed over yet, a get forces a flush.
    """

    def __init__(self) -> None:
        self.spoolq = _import()

    async def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        self.delivered: deque[Any] = deque()
        path = str(tmpdir / "batcher.sqlite")
        try:
            self.b: Any = self.spoolq.Batcher(
                self._on_flush, queue=path, max_batch_size=100, flush_interval=1.0
            )
            await self.b.__aenter__()
        except Exception as exc:
            raise Unavailable(f"Batcher(queue={path!r}): {type(exc).__name__}: {exc}") from exc

    async def _on_flush(self, batch: list[Any]) -> None:
        self.delivered.extend(batch)

    async def put(self, item: Any) -> None:
        await self.b.add(item)

    async def put_many(self, items: Sequence[Any]) -> None:
        await self.b.add_many(list(items))

    async def get(self) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GET_DEADLINE_S
        while not self.delivered:
            if loop.time() > deadline:
                raise TimeoutError("no item arrived")
            await self.b.flush(force=True)
            if not self.delivered:
                await asyncio.sleep(0.001)
        return self.delivered.popleft()

    async def close(self) -> None:
        await self.b.__aexit__(None, None, None)
