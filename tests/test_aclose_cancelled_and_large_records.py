"""Closing an async queue whose aclose() was cancelled, when its event loop ends or
stops, and records larger than the server's frames taken through a remote queue."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from pathlib import Path
from typing import Any

import spoolq
from spoolq import Queue
from spoolq.engines import open_engine


class _GatedTake:
    """Delegates to a real engine; a take waits for ``gate`` (``taking`` is set meanwhile),
    and ``closed`` is set once the engine is closed."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.name = inner.name
        self.gate = threading.Event()
        self.taking = threading.Event()
        self.closed = threading.Event()

    def take(self, *args: Any, **kwargs: Any) -> Any:
        self.taking.set()
        self.gate.wait(10)
        return self._inner.take(*args, **kwargs)

    def close(self) -> None:
        self._inner.close()
        self.closed.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def _cancelled_close(path: str, engine: _GatedTake) -> Queue[Any]:
    """A queue holding "x" whose get is taking it as an aclose() is cancelled."""
    q: Queue[Any] = await Queue.create(path, engine=engine)  # type: ignore[arg-type]
    await q.put("x")
    q.getter = asyncio.ensure_future(q.get())  # type: ignore[attr-defined]
    while not engine.taking.is_set():
        await asyncio.sleep(0.005)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(q.aclose(), 0.05)
    engine.gate.set()
    return q


def _left(path: str) -> list[Any]:
    with spoolq.SyncQueue.create(path) as again:
        return again.get_many(5, timeout=0.2) if again.qsize() else []


def test_the_loop_ending_during_a_cancelled_aclose_closes_the_file_first(
        tmp_path: Path) -> None:
    """asyncio.run() cancels the close task as it ends: the worker closed the file after
    the loop had closed (its result logged as lost), so asyncio.run() returned with the
    file open, and a program exiting then could end the worker's close midway."""
    path = str(tmp_path / "q.sqlite")
    engine = _GatedTake(open_engine(path))
    asyncio.run(_cancelled_close(path, engine))
    assert engine.closed.is_set()
    assert _left(path) == ["x"]


def test_an_aclose_on_another_loop_closes_what_a_cancelled_one_left(tmp_path: Path) -> None:
    """The loop of a cancelled aclose() stopped (not closed, its tasks not cancelled) while
    the close task waited: an aclose() on a second loop returned at once, and the file
    stayed open with the worker running."""
    path = str(tmp_path / "q.sqlite")
    engine = _GatedTake(open_engine(path))
    loop = asyncio.new_event_loop()
    try:
        q = loop.run_until_complete(_cancelled_close(path, engine))
        asyncio.run(asyncio.wait_for(q.aclose(), 10))
        assert engine.closed.is_set()
    finally:
        loop.close()
    assert _left(path) in ([], ["x"])


def test_an_aclose_left_unawaited_as_asyncio_run_ends_closes_the_file(tmp_path: Path) -> None:
    """The close task began after the loop's last step before asyncio.run() cancelled every
    task: cancelled before its first step, it never ran, and the file stayed open."""
    path = str(tmp_path / "q.sqlite")
    engine = _GatedTake(open_engine(path))
    engine.gate.set()

    async def main() -> None:
        q: Queue[Any] = await Queue.create(path, engine=engine)  # type: ignore[arg-type]
        await q.put("x")
        main.closing = asyncio.ensure_future(q.aclose())  # type: ignore[attr-defined]

    asyncio.run(main())
    assert engine.closed.wait(5)
    assert _left(path) == ["x"]


class _FailingClose(_GatedTake):
    def close(self) -> None:
        self._inner.close()
        raise spoolq.Unavailable("the disk went away")


def test_a_failed_close_reaches_the_aclose_and_a_second_one_waits(
        tmp_path: Path, caplog: Any) -> None:
    path = str(tmp_path / "q.sqlite")
    engine = _FailingClose(open_engine(path))
    engine.gate.set()

    async def main() -> None:
        q: Queue[Any] = await Queue.create(path, engine=engine)  # type: ignore[arg-type]
        first = asyncio.ensure_future(q.aclose())
        second = asyncio.ensure_future(q.aclose())
        done, _ = await asyncio.wait([first, second], timeout=10)
        assert len(done) == 2
        assert isinstance(first.exception(), spoolq.Unavailable)
        assert second.result() is None

    asyncio.run(main())
    gc.collect()
    assert "never retrieved" not in caplog.text
