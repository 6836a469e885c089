"""Settling on a closed handle: ``ack`` and ``nack`` raise ClosedError whatever they are
given, on SyncQueue as on Queue."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import spoolq
from spoolq import Queue, SyncQueue


@pytest.mark.parametrize("what", ["ack", "nack"])
def test_sync_settling_on_a_closed_handle_raises_closed_error(tmp_path: Path,
                                                               what: str) -> None:
    path = os.fspath(tmp_path / "q.sqlite")
    with SyncQueue.create(path) as other:
        other.put_many([1, 2])
        foreign = other.lease()
        q: SyncQueue[int] = SyncQueue.create(path)
        own = q.lease()
        q.close()
        settle = getattr(q, what)
        for args in ((own,), (foreign,), (own, foreign), ("not a message",)):
            with pytest.raises(spoolq.ClosedError):
                settle(*args)
        other.ack(foreign)  # the closed handle's calls changed nothing
        assert other.lease(block=False).attempts == 2  # close gave back ``own``


@pytest.mark.parametrize("what", ["ack", "nack"])
async def test_async_settling_on_a_closed_handle_raises_closed_error(tmp_path: Path,
                                                                      what: str) -> None:
    path = os.fspath(tmp_path / "q.sqlite")
    with SyncQueue.create(path) as other:
        other.put_many([1, 2])
        foreign = other.lease()
        q: Queue[int] = await Queue.create(path)
        own = await q.lease()
        await q.aclose()
        settle = getattr(q, what)
        for args in ((own,), (foreign,), (own, foreign), ("not a message",)):
            with pytest.raises(spoolq.ClosedError):
                await settle(*args)
        other.ack(foreign)
        assert other.lease(block=False).attempts == 2
