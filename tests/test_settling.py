"""Settling leased messages, task_done accounting, dead letters and the Message object,
through the public API on the memory, sqlite and lmdb engines."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

import spoolq
from spoolq import Empty, Queue, SyncQueue

from .conftest import queue_path


@pytest.fixture(params=["memory", "sqlite", "lmdb"])
def qpath(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return queue_path(tmp_path, str(request.param))


def test_nack_naming_a_message_twice_finishes_its_dead_letter_once(qpath: str) -> None:
    with SyncQueue.create(qpath, max_attempts=1) as q:
        q.put_many(["a", "b"])
        msg = q.lease()
        q.nack(msg, msg)  # one delivery, to the dead letters once
        assert q.stats["dead"] == 1 and q.qsize() == 1
        assert q.stats["unfinished"] == 1  # "b" is still waiting
        assert q.get() == "b"
        q.task_done()
        assert q.stats["unfinished"] == 0
        with pytest.raises(ValueError, match="too many"):
            q.task_done()


def test_message_with_an_unhashable_item_is_hashable(qpath: str) -> None:
    with SyncQueue.create(qpath) as q:
        q.put_many([{"job": 1}, {"job": 1}])
        first, second = q.lease_many(2)
        in_flight = {first, second}
        assert len(in_flight) == 2 and first in in_flight
        assert first != second and hash(first) == hash(copy.copy(first))
        q.ack(*in_flight)
        assert q.stats["leased"] == 0 and q.stats["acks"] == 2


@pytest.mark.parametrize("engine", ["sqlite", "lmdb"])
def test_ack_of_items_another_handle_put_keeps_sizes_true(tmp_path: Path, engine: str) -> None:
    qpath = queue_path(tmp_path, engine)
    with SyncQueue.create(qpath) as a, SyncQueue.create(qpath) as b:
        a.put("x")
        b.put("hello world" * 5)  # a's counts do not know of it yet
        msgs = a.lease_many(2, block=False)
        assert [m.item for m in msgs] == ["x", "hello world" * 5]
        a.ack(*msgs)
        stats = a.stats
        assert (stats["leased"], stats["acks"]) == (0, 2)
        assert (stats["raw_size_bytes"], stats["compressed_size_bytes"]) == (0, 0)
        assert stats["compression_ratio_pct"] is None


def test_settling_with_a_wrong_argument_says_how_and_changes_nothing(qpath: str) -> None:
    with SyncQueue.create(qpath) as q:
        q.put_many(["a", "b"])
        first, second = q.lease_many(2)
        with pytest.raises(TypeError, match=r"not int 5.*delay=5"):
            q.nack(first, 5)  # the delay given positionally
        with pytest.raises(TypeError, match=r"not list.*ack\(\*messages\)"):
            q.ack([first, second])
        with pytest.raises(TypeError, match=r"not tuple.*nack\(\*messages\)"):
            q.nack((first, second))
        assert q.stats["leased"] == 2 and (q.stats["acks"], q.stats["nacks"]) == (0, 0)
        q.ack(first, second)
        assert q.stats["leased"] == 0 and q.stats["acks"] == 2


@pytest.mark.parametrize("durability", ["commit", "buffer"])
def test_purge_counts_the_puts_it_deletes_at_every_durability(qpath: str, durability: str) -> None:
    with SyncQueue.create(qpath, durability=durability, flush_items=100, flush_interval=60) as q:
        q.put_many(["a", "b"])
        q.put("c")
        assert q.purge() == 3
        stats = q.stats
        assert (stats["count"], stats["puts"], stats["unfinished"]) == (0, 3, 0)
        assert (stats["raw_size_bytes"], stats["compressed_size_bytes"]) == (0, 0)
        q.put("d")
        assert q.get() == "d"
        q.task_done()
        assert (q.stats["puts"], q.stats["gets"]) == (4, 1)


def test_join_waits_for_a_put_after_the_queue_was_seen_empty(qpath: str) -> None:
    """As queue.Queue: two puts and one task_done leave one item unfinished, even when a
    get re-read the counts of the empty file in between."""
    with SyncQueue.create(qpath) as q:
        q.put("A")
        assert q.get() == "A"
        with pytest.raises(Empty):
            q.get(timeout=0.05)  # re-reads the counts: the file holds nothing
        q.put("B")
        q.task_done()  # for A
        assert q.stats["unfinished"] == 1
        assert q.get() == "B"
        q.task_done()
        assert q.stats["unfinished"] == 0
        q.join()


@pytest.mark.parametrize("ids", [5, "12", b"1"])
def test_requeue_dead_refuses_ids_that_are_not_a_list(qpath: str, ids: object) -> None:
    with SyncQueue.create(qpath, max_attempts=1) as q:
        q.put_many(["a", "b"])
        q.nack(q.lease(), q.lease())
        assert q.stats["dead"] == 2
        with pytest.raises(TypeError, match="ids must be a list of ids"):
            q.requeue_dead(ids)  # type: ignore[arg-type]
        assert (q.stats["dead"], q.qsize()) == (2, 0)
        assert q.requeue_dead() == 2 and q.qsize() == 2


async def test_async_requeue_dead_refuses_one_int(tmp_path: Path) -> None:
    async with await Queue.create(tmp_path / "q.sqlite", max_attempts=1) as q:
        await q.put("a")
        await q.nack(await q.lease())
        with pytest.raises(TypeError, match="ids must be a list of ids"):
            await q.requeue_dead(1)  # type: ignore[arg-type]
        assert await q.requeue_dead() == 1


def test_stats_after_close_show_the_leases_it_gave_back(qpath: str) -> None:
    q = SyncQueue.create(qpath, max_attempts=1)
    q.put_many(["a", "b"])
    q.lease()
    assert (q.stats["count"], q.stats["leased"]) == (1, 1)
    q.close()
    # max_attempts=1: the lease close gave back was the item's one delivery
    assert (q.stats["count"], q.stats["leased"], q.stats["dead"]) == (1, 0, 1)


async def test_async_stats_after_aclose_show_the_leases_it_gave_back(tmp_path: Path) -> None:
    q = await Queue.create(tmp_path / "q.sqlite")
    await q.put_many(["a", "b"])
    await q.lease()
    await q.aclose()
    assert (q.stats["count"], q.stats["leased"], q.qsize()) == (2, 0, 2)


def test_get_of_an_item_another_handle_put_keeps_sizes_true(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(path) as a, SyncQueue.create(path) as b:
        b.put("x" * 50)
        a.put("y")
        assert a.get() == "x" * 50
        stats = a.stats
        assert stats["raw_size_bytes"] > 0 and stats["compressed_size_bytes"] > 0
        assert stats["count"] == 1


async def test_an_empty_path_is_refused_not_a_temporary_queue(tmp_path: Path) -> None:
    """SQLite takes an empty file name for a temporary database, deleted on close with
    everything put into it."""
    with pytest.raises(spoolq.ConfigurationError, match="path is empty"):
        SyncQueue.create("")
    with pytest.raises(spoolq.ConfigurationError, match="path is empty"):
        await Queue.create("", engine="sqlite")
    with SyncQueue.create("", engine="memory") as q:  # a memory queue needs no file
        q.put("kept while open")
        assert q.get() == "kept while open"
