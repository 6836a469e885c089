"""What docs/leases.md says of the lease counters in ``stats`` and of leases held when the
queue shuts down, on every engine."""

from __future__ import annotations

import time

import pytest

import spoolq
from spoolq import Queue, SyncQueue


def test_lease_counters_count_what_this_handle_did(path: str) -> None:
    with SyncQueue.create(path, max_attempts=2, poll_interval=0.02) as q:
        q.put_many(["a", "b", "c"])
        a = q.lease()
        q.ack(a, a)
        with pytest.raises(spoolq.LeaseError):
            q.ack(a)
        assert q.stats["acks"] == 1
        b = q.lease()
        q.nack(b)  # the first delivery of two: back in line
        assert (q.stats["nacks"], q.stats["redelivered"], q.stats["dead"]) == (1, 0, 0)
        b = q.lease(block=False)
        q.nack(b)  # the second: a dead letter, counted as a nack all the same
        assert (q.stats["nacks"], q.stats["redelivered"], q.stats["dead"]) == (2, 0, 1)
        held = q.lease(ttl=0.05)
        assert q.stats["leased"] == 1
        time.sleep(0.1)
        again = q.lease(timeout=5)  # this handle's look returned it for another delivery
        assert (again.item, again.attempts) == (held.item, 2)
        assert q.stats["redelivered"] == 1
        q.nack(again)  # past max_attempts: dead, not redelivered
        assert (q.stats["redelivered"], q.stats["dead"], q.stats["leased"]) == (1, 2, 0)


def test_shutdown_leaves_held_leases_to_be_settled(path: str) -> None:
    with SyncQueue.create(path) as q:
        q.put_many(["a", "b", "c"])
        a, b = q.lease(), q.lease()
        q.shutdown()
        assert q.lease(block=False).item == "c"  # drains what is ready
        with pytest.raises(spoolq.QueueShutDown):
            q.lease(timeout=5)  # does not wait for a and b to come back
        q.ack(a)
        q.nack(b)
        again = q.lease(block=False)
        assert (again.item, again.attempts) == ("b", 2)
        q.ack(again)
        assert q.stats["acks"] == 2


async def test_async_shutdown_leaves_held_leases_to_be_settled(path: str) -> None:
    async with await Queue.create(path) as q:
        await q.put_many(["a", "b"])
        a = await q.lease()
        q.shutdown()
        assert (await q.lease()).item == "b"
        with pytest.raises(spoolq.QueueShutDown):
            await q.lease(timeout=5)
        await q.nack(a)
        again = await q.lease()
        assert (again.item, again.attempts) == ("a", 2)
        await q.ack(again)
