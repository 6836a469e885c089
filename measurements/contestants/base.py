"""The uniform interface every contestant implements.

Sync contestants implement :class:`Contestant`; async ones
:class:`AsyncContestant`. ``get`` blocks until an item is there. ``flush``
marks the end of a phase (the end of the puts, the end of the gets); only
contestants that hold one transaction or pipeline open across operations do
anything in it. ``close`` is part of the measured time.

Constructors import the library under test (through :func:`load`), so that
import time never counts as open time in the reopen workload.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final


class Unavailable(Exception):
    """The contestant cannot run here (library or engine missing)."""


def load(module: str) -> Any:
    """Import a peer library, or raise :class:`Unavailable` naming what failed."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"cannot import {module}: {exc}") from exc


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: Returned by ``try_get`` when the queue is empty.
MISSING: Final = _Missing()

#: A blocking get gives up after this long without an item.
GET_DEADLINE_S: Final = 60.0


class Contestant(ABC):
    """A synchronous queue under test."""

    def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:  # noqa: B027
        """Open (or reopen) the queue under ``tmpdir``."""

    @abstractmethod
    def put(self, item: Any) -> None: ...

    @abstractmethod
    def get(self) -> Any: ...

    def put_many(self, items: Sequence[Any]) -> None:
        for item in items:
            self.put(item)

    def get_many(self, n: int) -> list[Any]:
        return [self.get() for _ in range(n)]

    def flush(self) -> None:  # noqa: B027
        """End of a phase: commit what an open transaction or pipeline holds."""

    @abstractmethod
    def close(self) -> None: ...


class PollingContestant(Contestant):
    """A store without a blocking get: ``get`` polls ``try_get``.

    A put in the same process wakes a waiting consumer at once; otherwise the
    consumer looks again every few milliseconds.
    """

    def __init__(self) -> None:
        self._wake = threading.Event()

    @abstractmethod
    def store(self, item: Any) -> None: ...

    @abstractmethod
    def try_get(self) -> Any:
        """The oldest item, or :data:`MISSING` when the queue is empty."""

    def store_many(self, items: Sequence[Any]) -> None:
        for item in items:
            self.store(item)

    def try_get_many(self, n: int) -> list[Any]:
        out: list[Any] = []
        while len(out) < n:
            item = self.try_get()
            if item is MISSING:
                break
            out.append(item)
        return out

    def put(self, item: Any) -> None:
        self.store(item)
        self._wake.set()

    def put_many(self, items: Sequence[Any]) -> None:
        self.store_many(items)
        self._wake.set()

    def _wait(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError("no item arrived")
        self._wake.wait(0.005)
        self._wake.clear()

    def get(self) -> Any:
        deadline = time.monotonic() + GET_DEADLINE_S
        while True:
            item = self.try_get()
            if item is not MISSING:
                return item
            self._wait(deadline)

    def get_many(self, n: int) -> list[Any]:
        deadline = time.monotonic() + GET_DEADLINE_S
        out: list[Any] = []
        while len(out) < n:
            got = self.try_get_many(n - len(out))
            if got:
                out.extend(got)
            else:
                self._wait(deadline)
        return out


class AsyncContestant(ABC):
    """An asynchronous queue under test."""

    async def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:  # noqa: B027
        """Open (or reopen) the queue under ``tmpdir``."""

    @abstractmethod
    async def put(self, item: Any) -> None: ...

    @abstractmethod
    async def get(self) -> Any: ...

    async def put_many(self, items: Sequence[Any]) -> None:
        for item in items:
            await self.put(item)

    async def get_many(self, n: int) -> list[Any]:
        return [await self.get() for _ in range(n)]

    async def flush(self) -> None:  # noqa: B027
        """End of a phase: commit what an open transaction or pipeline holds."""

    @abstractmethod
    async def close(self) -> None: ...


class DirectAsync(AsyncContestant):
    """Runs a polling sync contestant straight on the event loop.

    This is the naive way to use a blocking store from asyncio: every call
    blocks the loop for its duration, so concurrent producers are served one
    after the other. It gives the baselines a row in the async workloads.
    """

    def __init__(self, inner: PollingContestant) -> None:
        self.inner = inner
        self._arrived = asyncio.Event()

    async def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        self.inner.setup(tmpdir, params)

    async def put(self, item: Any) -> None:
        self.inner.put(item)
        self._arrived.set()

    async def put_many(self, items: Sequence[Any]) -> None:
        self.inner.put_many(items)
        self._arrived.set()

    async def get(self) -> Any:
        while True:
            item = self.inner.try_get()
            if item is not MISSING:
                return item
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), GET_DEADLINE_S)

    async def get_many(self, n: int) -> list[Any]:
        out: list[Any] = []
        while len(out) < n:
            got = self.inner.try_get_many(n - len(out))
            if got:
                out.extend(got)
            else:
                self._arrived.clear()
                await asyncio.wait_for(self._arrived.wait(), GET_DEADLINE_S)
        return out

    async def flush(self) -> None:
        self.inner.flush()

    async def close(self) -> None:
        self.inner.close()
