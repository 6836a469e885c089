"""Queue (asyncio): the order waiting calls are served in, and waits ended by timeouts,
cancellation, shutdown, close and a server that stops, on local and remote engines."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from spoolq import Queue

WAITERS = 12


async def _producer(where: str, q: Queue[Any]) -> Queue[Any]:
    """Another handle on the queue of ``where`` (the same one for ":memory:", where a
    second handle opens a queue of its own)."""
    return q if where == ":memory:" else await Queue.create(where)


async def _line_up(q: Queue[Any], take: Callable[[], Awaitable[Any]],
                   n: int) -> tuple[list[asyncio.Task[None]], list[tuple[int, Any]]]:
    """Start ``n`` waiting calls one after the other, 10 ms apart (each then sleeps in
    its own phase of the poll interval); return their tasks and the list of
    (rank, what it received) they fill in."""
    served: list[tuple[int, Any]] = []

    async def wait(rank: int) -> None:
        served.append((rank, await take()))

    tasks = []
    for rank in range(n):
        tasks.append(asyncio.create_task(wait(rank)))
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    return tasks, served


@pytest.mark.parametrize("how", ["one by one", "trickle", "batch"])
async def test_waiting_gets_are_served_in_the_order_they_started_waiting(where: str,
                                                                         how: str) -> None:
    # Waiting gets raced for each item: a put woke them all, in the order of their last
    # poll's wake-up, and the first to run took it. The oldest waiter was served first
    # about one time in five (the remote engine's gets, sharing one long-poll, went
    # mostly in order, yet not strictly).
    async with await Queue.create(where) as q, await _producer(where, q) as producer:
        tasks, served = await _line_up(q, q.get, WAITERS)
        if how == "batch":
            await producer.put_many(list(range(WAITERS)))
        for i in range(WAITERS if how != "batch" else 0):
            await producer.put(i)
            await asyncio.sleep(0.03 if how == "one by one" else 0.003)
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert served == [(i, i) for i in range(WAITERS)]


async def test_waiting_leases_are_served_in_the_order_they_started_waiting(where: str) -> None:
    async with await Queue.create(where) as q, await _producer(where, q) as producer:
        tasks, served = await _line_up(q, lambda: q.lease(ttl=60), WAITERS)
        for i in range(WAITERS):
            await producer.put(i)
            await asyncio.sleep(0.02)
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        assert [(rank, msg.item) for rank, msg in served] == [(i, i) for i in range(WAITERS)]
        await q.ack(*(msg for _, msg in served))


@pytest.mark.parametrize("call", ["get_many", "lease_many"])
async def test_a_call_out_of_time_takes_what_is_ready_behind_a_waiting_get(where: str,
                                                                         call: str) -> None:
    # A call whose timeout is over looks once more, as get_nowait would: with records
    # ready it takes them although an older get still waits its turn, instead of raising
    # Empty with items ready.
    async with await Queue.create(where) as q:
        waiting = asyncio.create_task(q.get())
        await asyncio.sleep(0.2)
        await q.put_many(["a", "b", "c"])  # counted at once (another handle's, at a poll)
        took: list[Any]
        if call == "get_many":
            took = await q.get_many(3, timeout=0)
        else:
            took = [msg.item for msg in await q.lease_many(3, timeout=0, ttl=60)]
        try:
            assert took and set(took) <= {"a", "b", "c"}
            rest = sorted({"a", "b", "c"} - set(took))
            if rest:
                assert await asyncio.wait_for(waiting, 5) == rest[0]
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
