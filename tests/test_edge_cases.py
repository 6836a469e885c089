"""Edge cases: failures mid-flush, closing under waiters, shutdown with part batches, bad input."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import spoolq
from spoolq import Queue, SyncQueue


def test_buffer_survives_a_failed_flush(tmp_path: Path) -> None:
    path = str(tmp_path / "b.sqlite")
    with SyncQueue.create(path, durability="buffer", flush_interval=3600,
                          engine_options={"timeout": 0.1}) as q:
        q.put_many(range(5))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(spoolq.LockTimeout):
            q.flush()
        other.execute("COMMIT")
        other.close()
        assert q.qsize() == 5
    with SyncQueue.create(path) as q:
        assert q.get_many(None) == [0, 1, 2, 3, 4]


def test_close_gives_back_what_a_waiting_get_many_held(disk_path: str) -> None:
    q = SyncQueue.create(disk_path)
    q.put_many([1, 2])
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            q.get_many(5)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.3)
    q.close()
    t.join(10)
    assert errors and isinstance(errors[0], spoolq.QueueShutDown)
    with SyncQueue.create(disk_path) as again:
        assert again.get_many(None, block=False) == [1, 2]


async def test_aclose_gives_back_what_a_waiting_get_many_held(disk_path: str) -> None:
    q = await Queue.create(disk_path)
    await q.put_many([1, 2])
    waiter = asyncio.create_task(q.get_many(5))
    await asyncio.sleep(0.2)
    await q.aclose()
    with pytest.raises(spoolq.QueueShutDown):
        await waiter
    async with await Queue.create(disk_path) as again:
        assert await again.get_many(None, timeout=1) == [1, 2]


def test_shutdown_hands_out_a_part_batch(path: str) -> None:
    with SyncQueue.create(path) as q:
        q.put_many([1, 2])
        threading.Timer(0.2, q.shutdown).start()
        assert q.get_many(5, timeout=10) == [1, 2]


def test_join_returns_after_immediate_shutdown(path: str) -> None:
    with SyncQueue.create(path) as q:
        q.put("never done")
        threading.Timer(0.1, q.shutdown, kwargs={"immediate": True}).start()
        start = time.monotonic()
        q.join()
        assert time.monotonic() - start < 5


def test_bad_sizes_and_ids_are_refused(path: str) -> None:
    with SyncQueue.create(path) as q, SyncQueue.create(
            path if path != ":memory:" else ":memory:", name="billing") as billing:
        q.put_many(range(3))
        billing.put("invoice")
        with pytest.raises(ValueError):
            q.lease_many(0)
        with pytest.raises(ValueError):
            q.lease_many(-1)
        with pytest.raises(ValueError):
            q.peek(-1)
        with pytest.raises(ValueError):
            q.peek(1, offset=-2)
        with pytest.raises(ValueError, match="ids must be >= 0"):
            q.requeue_dead([-1, 0])
        assert q.requeue_dead([2**41, 2**64, 0]) == 0  # ids no dead letter has
        assert billing.qsize() == 1 and billing.get() == "invoice"


def test_leased_keeps_the_callers_exception_when_the_lease_is_gone(path: str) -> None:
    with SyncQueue.create(path, poll_interval=0.02) as q:
        q.put("job")
        with pytest.raises(KeyError), q.leased(ttl=0.05) as item:
            assert item == "job"
            other = q.lease(timeout=3, ttl=30)  # the first lease ran out and was redelivered
            q.ack(other)
            raise KeyError(item)


@pytest.mark.parametrize(("setting", "value", "says"), [
    ("flush_interval", float("inf"), "flush_interval must be a finite number of seconds"),
    ("poll_interval", float("inf"), "poll_interval must be a finite number of seconds"),
    ("flush_interval", "1", "flush_interval must be a number of seconds, not str"),
    ("flush_interval", 0, "flush_interval must be > 0"),
    ("poll_interval", True, "poll_interval must be a number of seconds, not bool"),
    ("flush_items", True, "flush_items must be an int, not bool"),
    ("flush_items", 0, "flush_items must be >= 1"),
    ("maxsize", True, "maxsize must be an int, not bool"),
    ("maxsize", 2.0, "maxsize must be an int, not float"),
    ("max_attempts", 0, "max_attempts must be >= 1"),
])
def test_bad_queue_settings_are_configuration_errors_naming_them(
        tmp_path: Path, setting: str, value: object, says: str) -> None:
    path = tmp_path / "q.sqlite"
    with pytest.raises(spoolq.ConfigurationError, match=says):
        SyncQueue.create(path, **{setting: value})  # type: ignore[arg-type]
    with pytest.raises(spoolq.ConfigurationError, match=says):
        asyncio.run(Queue.create(path, **{setting: value}))  # type: ignore[arg-type]
    assert not path.exists()


def test_buffered_records_given_back_to_the_buffer_keep_their_count(tmp_path: Path) -> None:
    # A get served from the unflushed buffer whose taker never received the items (a
    # cancelled async get) puts them back in front: the queue must count them again.
    with SyncQueue.create(tmp_path / "q.sqlite", durability="buffer", flush_items=1000,
                          flush_interval=60) as q:
        q.put_many([1, 2, 3])
        core = q._core
        taken = core.take(2, None)
        assert core.items(taken) == [1, 2] and q.qsize() == 1
        core.restore(taken, leased=False)
        assert q.qsize() == 3
        assert q.get_many(3) == [1, 2, 3]
        assert q.qsize() == 0


def test_group_commit_gives_back_a_ticket_s_records_only_while_it_can_find_them() -> None:
    from spoolq.groupcommit import GroupCommit, Ticket

    group = GroupCommit()
    one, two, three = Ticket(), Ticket(), Ticket()
    group.add([b"a", b"b"], [1, 1], one)
    group.add([b"c"], [1], two)
    group.add([b"d", b"e"], [1, 1], three)
    assert group.withdraw(two) == ([b"c"], [1])
    assert group.withdraw(two) is None
    assert group.withdraw(three) == ([b"d", b"e"], [1, 1])
    assert group.take_all() == ([b"a", b"b"], [1, 1], [one])
    assert group.withdraw(one) is None  # a flush has it
    group.written(2)
    group.add([b"f", b"g"], [1, 1], one)
    assert group.take_front(1)[0] == [b"f"]  # handed to a consumer: the rest is beyond reach
    assert group.withdraw(one) is None and group.unwritten() == 1
