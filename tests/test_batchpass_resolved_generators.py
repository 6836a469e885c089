"""Batcher: a generator that the work a sink handed on resolves to (a thread's result, or an
awaitable an async sink returned unawaited) fails the flush, as a generator a sink returns
does: none of its body ran, so acking the batch would lose it unsent."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolq import Batcher

from .batching import flush_fails_and_keeps_the_batch

ran: list[list[int]] = []
pool = concurrent.futures.ThreadPoolExecutor(2)


def _send(batch: list[int]) -> Iterator[None]:
    ran.append(batch)  # a stray yield made this a generator function: never runs
    yield


async def _async_to_thread(batch: list[int]) -> object:
    return asyncio.to_thread(_send, batch)  # the await left out


async def _async_pool(batch: list[int]) -> object:
    return pool.submit(_send, batch)


def _plain_pool(batch: list[int]) -> object:
    return pool.submit(_send, batch)


async def _returns_to_thread(batch: list[int]) -> object:
    return asyncio.to_thread(_send, batch)


def _plain_coroutine_of_to_thread(batch: list[int]) -> object:
    return _returns_to_thread(batch)


@pytest.mark.parametrize("sink", [_async_to_thread, _async_pool, _plain_pool,
                                  _plain_coroutine_of_to_thread])
async def test_work_that_resolves_to_a_generator_fails_the_flush_and_keeps_the_batch(
        tmp_path: Path, sink: Callable[[list[int]], Any]) -> None:
    await flush_fails_and_keeps_the_batch(str(tmp_path / "q.sqlite"), sink, ran)


sent: list[list[int]] = []


async def _send_async(batch: list[int]) -> None:
    sent.append(batch)


def _plain_pool_of_async(batch: list[int]) -> object:
    return pool.submit(_send_async, batch)  # the thread makes a coroutine, runs none of it


async def _async_pool_of_async(batch: list[int]) -> object:
    return pool.submit(_send_async, batch)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("sink", [_plain_pool_of_async, _async_pool_of_async])
async def test_a_pool_future_that_resolves_to_a_coroutine_fails_the_flush(
        tmp_path: Path, sink: Callable[[list[int]], Any]) -> None:
    """An async function handed to a pool: the thread only makes its coroutine, which
    nothing runs. Acked, the batch would be lost unsent."""
    sent.clear()
    b = Batcher(sink, queue=str(tmp_path / "q.sqlite"), flush_interval=60)
    await b.start()
    try:
        await b.add_many(range(3))
        assert await b.flush() is False
        assert sent == []
        assert b.stats["failures"] == 1 and b.stats["items"] == 0
        assert await b.queue.peek(5) == [0, 1, 2]
    finally:
        await b.stop()


async def _async_executor_of_async(batch: list[int]) -> object:
    return asyncio.get_running_loop().run_in_executor(None, _send_async, batch)


async def _async_to_thread_of_async(batch: list[int]) -> object:
    return asyncio.to_thread(_send_async, batch)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("sink", [_async_executor_of_async, _async_to_thread_of_async])
async def test_what_returned_work_resolves_to_is_awaited_in_turn(
        tmp_path: Path, sink: Callable[[list[int]], Any]) -> None:
    """As a coroutine a plain sink's run_in_executor future resolves to is: the batch is
    acked once it ran, not dropped unrun."""
    sent.clear()
    b = Batcher(sink, queue=str(tmp_path / "q.sqlite"), flush_interval=60)
    await b.start()
    try:
        await b.add_many(range(3))
        assert await b.flush() is True
        assert sent == [[0, 1, 2]]
        assert b.stats["failures"] == 0 and b.stats["items"] == 3
    finally:
        await b.stop()
