"""Queue (asyncio): the line of waiting gets and leases of one queue object, with several
consumer tasks taking in a loop, and the calls left in line when the queue is shut down
and drained."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from spoolq import Queue, QueueShutDown

CONSUMERS = 4


@pytest.mark.parametrize("call", ["get", "lease"])
async def test_consumers_taking_in_a_loop_are_served_in_turn(where: str, call: str) -> None:
    # Each consumer goes to the back of the line when it calls again, so with every
    # consumer back in line before the next item is served, they take turns.
    items = 10 * CONSUMERS
    async with await Queue.create(where) as q:
        received: list[list[int]] = [[] for _ in range(CONSUMERS)]
        leases: list[Any] = []

        async def consume(rank: int) -> None:
            while True:
                try:
                    if call == "get":
                        item = await q.get()
                    else:
                        msg = await q.lease(ttl=60)
                        leases.append(msg)
                        item = msg.item
                except QueueShutDown:
                    return
                received[rank].append(item)

        tasks = []
        for rank in range(CONSUMERS):
            tasks.append(asyncio.create_task(consume(rank)))
            await asyncio.sleep(0.01)  # in line in the order of their rank
        await asyncio.sleep(0.1)
        for i in range(items):
            await q.put(i)
        q.shutdown()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        if leases:
            await q.ack(*leases)
    assert received == [list(range(rank, items, CONSUMERS)) for rank in range(CONSUMERS)]


@pytest.mark.parametrize("call", ["get", "lease"])
async def test_a_call_whose_turn_did_not_come_raises_once_the_shut_down_queue_is_drained(
        where: str, call: str) -> None:
    # Four calls wait; three records come and the queue is shut down: the three calls
    # first in line take them, and the fourth, whose turn did not come while records
    # were ready, raises QueueShutDown as soon as they are taken. It slept until its
    # poll interval passed instead.
    async with await Queue.create(where, poll_interval=5.0) as q:
        async def take() -> Any:
            if call == "get":
                return await q.get()
            return (await q.lease(ttl=60)).item

        tasks = []
        for _ in range(CONSUMERS):
            tasks.append(asyncio.create_task(take()))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        await q.put_many(["a", "b", "c"])
        q.shutdown()
        started = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
        took = time.monotonic() - started
    assert results[:3] == ["a", "b", "c"]
    assert isinstance(results[3], QueueShutDown)
    assert took < 1.0
