"""Batcher: a generator returned by an async sink (or by what a plain sink returned)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolq import Batcher

ran: list[list[int]] = []


async def _agen(batch: list[int]) -> AsyncIterator[None]:
    ran.append(batch)
    yield


def _gen(batch: list[int]) -> Iterator[None]:
    ran.append(batch)
    yield


async def _returns_agen(batch: list[int]) -> object:
    return _agen(batch)  # the body that would send never runs


async def _returns_gen(batch: list[int]) -> object:
    return _gen(batch)


def _plain_returning_coroutine_of_gen(batch: list[int]) -> object:
    return _returns_gen(batch)


@pytest.mark.parametrize("sink", [_returns_agen, _returns_gen,
                                  _plain_returning_coroutine_of_gen])
async def test_a_generator_an_async_sink_returns_fails_its_flush_and_keeps_the_batch(
        tmp_path: Path, sink: Callable[[list[int]], Any]) -> None:
    """As one a plain sink returns does: acked, the batch would be lost unsent."""
    ran.clear()
    b = Batcher(sink, queue=str(tmp_path / "q.sqlite"), flush_interval=60)
    await b.start()
    try:
        await b.add_many(range(3))
        assert await b.flush() is False
        assert ran == []
        assert b.stats["failures"] == 1 and b.stats["items"] == 0
        assert await b.queue.peek(5) == [0, 1, 2]
    finally:
        await b.stop()
