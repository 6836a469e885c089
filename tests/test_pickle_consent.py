"""A queue whose file says its records are pickled is not unpickled unless the caller
asks for pickle: opening a file with the default settings never runs code from it (the
default, cbor, cannot), so a file from elsewhere is refused with a clear error instead."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import spoolq


class _Runs:
    """Unpickling it writes a file: the proof that code from the queue file ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.marker), "ran"))  # type: ignore[return-value]


@pytest.mark.parametrize("engine", ["sqlite", "lmdb", "dbm"])
def test_a_pickled_queue_opens_only_when_pickle_is_asked_for(tmp_path: Path,
                                                              engine: str) -> None:
    path = str(tmp_path / f"q.{engine}")
    marker = tmp_path / "marker"
    with spoolq.SyncQueue.create(path, engine=engine, serializer="pickle") as q:
        q.put(_Runs(str(marker)))
        q.put({"kept": 1})
    with pytest.raises(spoolq.ConfigurationError, match="pickle") as caught:
        spoolq.SyncQueue.create(path, engine=engine)
    assert "serializer='pickle'" in str(caught.value)
    assert not marker.exists()
    with spoolq.SyncQueue.create(path, engine=engine, serializer="pickle") as q:
        assert q.qsize() == 2  # nothing was changed by the refused open
        assert not marker.exists()
        q.get()
        assert marker.read_text() == "ran"  # the caller asked for pickle: it is unpickled
        assert q.get() == {"kept": 1}


def test_the_async_queue_refuses_it_too(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path, serializer="pickle") as q:
        q.put(("a", 1))

    async def main() -> object:
        with pytest.raises(spoolq.ConfigurationError, match="pickle"):
            await spoolq.Queue.create(path)
        async with await spoolq.Queue.create(path, serializer="pickle") as aq:
            return await aq.get()

    assert asyncio.run(main()) == ("a", 1)
