"""SyncQueue and Queue at the edges of shutdown and close: empty batches, puts racing a
shutdown, leased blocks whose queue closes, put_nowait after another handle made room,
and records a waiting get_many holds when close() stops waiting for it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import spoolq
from spoolq import Queue, SyncQueue


@pytest.fixture(params=[":memory:", "queue.sqlite"])
def either_path(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The memory engine (called on the event loop) and a SQLite file (on the worker)."""
    name = str(request.param)
    return name if name == ":memory:" else str(tmp_path / name)


# ---- put_many([]) after shutdown ---------------------------------------------------------

@pytest.mark.parametrize("maxsize", [0, 3])
def test_sync_put_many_of_nothing_after_shutdown_raises(either_path: str, maxsize: int) -> None:
    # An empty batch returned before the shutdown check: put raised, put_many([]) did not.
    with SyncQueue.create(either_path, maxsize=maxsize) as q:
        q.put_many([])
        q.shutdown()
        with pytest.raises(spoolq.QueueShutDown):
            q.put_many([])
        with pytest.raises(spoolq.QueueShutDown):
            q.put_many([], block=False)


@pytest.mark.parametrize("maxsize", [0, 3])
async def test_async_put_many_of_nothing_after_shutdown_raises(either_path: str,
                                                               maxsize: int) -> None:
    async with await Queue.create(either_path, maxsize=maxsize) as q:
        await q.put_many([])
        q.shutdown()
        with pytest.raises(spoolq.QueueShutDown):
            await q.put_many([])
        with pytest.raises(spoolq.QueueShutDown):
            await q.put_many([], timeout=0)


# ---- leased() when the queue closes inside the block ------------------------------------

class _Boom(Exception):
    pass


def test_sync_leased_keeps_the_callers_exception_when_the_queue_closes(
        either_path: str, caplog: pytest.LogCaptureFixture) -> None:
    # The nack after the block raised ClosedError, which replaced the caller's exception.
    q: SyncQueue[str] = SyncQueue.create(either_path)
    q.put("job")
    with caplog.at_level(logging.WARNING, "spoolq"), pytest.raises(_Boom), \
            q.leased(timeout=5) as item:
        assert item == "job"
        q.close()
        raise _Boom
    assert "could not be nacked" in caplog.text


async def test_async_leased_keeps_the_callers_exception_when_the_queue_closes(
        either_path: str, caplog: pytest.LogCaptureFixture) -> None:
    q: Queue[str] = await Queue.create(either_path)
    await q.put("job")
    with caplog.at_level(logging.WARNING, "spoolq"), pytest.raises(_Boom):
        async with q.leased(timeout=5) as item:
            assert item == "job"
            await q.aclose()
            raise _Boom
    assert "could not be nacked" in caplog.text


def test_sync_leased_still_nacks_on_error_and_acks_on_success(either_path: str) -> None:
    with SyncQueue.create(either_path) as q:
        q.put("job")
        with pytest.raises(_Boom), q.leased(timeout=5):
            raise _Boom
        with q.leased(timeout=5) as item:
            assert item == "job"
        assert q.qsize() == 0 and q.stats["leased"] == 0 and q.stats["nacks"] == 1



# ---- put_nowait after another handle made room ------------------------------------------

def test_sync_put_nowait_rereads_the_counts_before_refusing(tmp_path: Path) -> None:
    # put_nowait refused from the count this handle last read, long after another handle
    # had emptied the queue (get_nowait re-reads before it raises Empty).
    path = str(tmp_path / "q.sqlite")
    with SyncQueue.create(path, maxsize=2, poll_interval=60) as q, \
            SyncQueue.create(path, poll_interval=60) as other:
        q.put_many([1, 2])
        assert q.full()
        assert other.get_many(2, block=False) == [1, 2]
        q.put_nowait(3)
        assert other.get_many(None, block=False) == [3]
        q.put_many([4, 5], timeout=0)  # past its deadline at once: looks again first
        with pytest.raises(spoolq.Full):
            q.put_nowait(6)  # really full now
        assert other.get_many(None, block=False) == [4, 5]


async def test_async_put_nowait_rereads_the_counts_before_refusing(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    async with await Queue.create(path, maxsize=2, poll_interval=60) as q:
        with SyncQueue.create(path, poll_interval=60) as other:
            await q.put_many([1, 2])
            assert q.full()
            assert other.get_many(2, block=False) == [1, 2]
            q.put_nowait(3)
            assert other.get_many(None, block=False) == [3]
            await q.put_many([4, 5], timeout=0)  # past its deadline at once: looks again
            with pytest.raises(spoolq.Full):
                q.put_nowait(6)
            assert other.get_many(None, block=False) == [4, 5]
