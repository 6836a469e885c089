"""join() counts items, not which ones (docs/api.md, docs/leases.md): what each pattern
the docs describe gives."""

from __future__ import annotations

import threading
from pathlib import Path

from spoolq import SyncQueue


def test_a_handle_taking_others_items_finishes_its_count_with_them(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with SyncQueue.create(path) as mine, SyncQueue.create(path) as other:
        other.put("X")
        mine.put_many(["a", "b"])
        assert mine.stats["unfinished"] == 2
        assert mine.get() == "X"
        mine.task_done()
        assert mine.get() == "a"
        mine.task_done()
        # Two items taken and done: the count of two is used up, "b" still queued.
        assert mine.stats["unfinished"] == 0 and mine.peek(5) == ["b"]


def test_a_producer_handle_that_does_not_take_waits_until_the_queue_is_empty(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with SyncQueue.create(path, poll_interval=0.02) as producer, \
            SyncQueue.create(path, poll_interval=0.02) as consumer, \
            SyncQueue.create(path) as other:
        other.put("X")
        producer.put_many(["a", "b"])
        joined = threading.Event()
        waiter = threading.Thread(target=lambda: (producer.join(), joined.set()))
        waiter.start()
        for expected in ("X", "a"):
            assert consumer.get() == expected
            consumer.task_done()
        assert not joined.wait(0.5)  # "b" is still queued
        assert consumer.get() == "b"
        consumer.task_done()
        assert joined.wait(10)
        waiter.join(10)
