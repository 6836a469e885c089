"""An async queue left unclosed is collected, and its worker thread ends, whatever call it
made last: a get, a get_many, or a get cancelled while its take ran on the worker. Each
such queue kept its worker thread and its open file for the life of the process."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
import warnings
import weakref
from pathlib import Path

import pytest

import spoolq

from .conftest import DISK_ENGINES, queue_path


def _spoolq_threads() -> int:
    return sum(t.name.startswith("spoolq-") for t in threading.enumerate())


async def _get(q: spoolq.Queue[object]) -> None:
    await q.get()


async def _get_many(q: spoolq.Queue[object]) -> None:
    await q.get_many(2, timeout=0.01)


async def _get_cancelled(q: spoolq.Queue[object]) -> None:
    task = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)  # its take is handed to the worker
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)  # the give-back runs on the worker


@pytest.mark.parametrize("engine", DISK_ENGINES)
@pytest.mark.parametrize("last_call", [_get, _get_many, _get_cancelled])
def test_unclosed_async_queue_is_collected_and_its_thread_ends(tmp_path: Path, engine: str,
                                                               last_call: object) -> None:
    path = queue_path(tmp_path, engine)
    before = _spoolq_threads()
    refs: list[weakref.ref[spoolq.Queue[object]]] = []

    async def main() -> None:
        q: spoolq.Queue[object] = await spoolq.Queue.create(path)
        await q.put(1)
        await last_call(q)  # type: ignore[operator]
        refs.append(weakref.ref(q))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(3):
            asyncio.run(main())
        gc.collect()
    assert [r() for r in refs] == [None] * 3
    deadline = time.monotonic() + 3
    while _spoolq_threads() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _spoolq_threads() == before
    with spoolq.SyncQueue.create(path) as q:  # nothing lost: each put item is there or was got
        assert q.qsize() == (3 if last_call is _get_cancelled else 0)
