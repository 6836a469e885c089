"""Batcher: a generator returned by an async sink (or by what a plain sink returned)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .batching import flush_fails_and_keeps_the_batch

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
    await flush_fails_and_keeps_the_batch(str(tmp_path / "q.sqlite"), sink, ran)
