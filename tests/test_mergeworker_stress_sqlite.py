"""Puts of several threads of a SyncQueue on a SQLite file while other threads get and
lease: takes then often find puts pending for their group commit and write them in the
take's transaction. Every put that returned is got once, in the order of its thread,
and the counts, stats and join() add up after."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from spoolq import Empty, SyncQueue
from spoolq.engines import Counts

from .sqlite_locks import file_counts

PUTTERS = 6
EACH = 150


def _run(q: SyncQueue[Any], lease: bool) -> list[tuple[int, int]]:
    got: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def put(who: int) -> None:
        try:
            for k in range(EACH):
                q.put((who, k))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def get() -> None:
        try:
            while True:
                try:
                    if lease:
                        msgs = q.lease_many(3, timeout=0.05, ttl=60)
                        got.extend(tuple(m.item) for m in msgs)
                        q.ack(*msgs)  # an ack is the task's end
                    else:
                        items = q.get_many(3, timeout=0.05)
                        got.extend(tuple(i) for i in items)
                        for _ in items:
                            q.task_done()
                except Empty:
                    if done.is_set():
                        return
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    putters = [threading.Thread(target=put, args=(w,)) for w in range(PUTTERS)]
    getters = [threading.Thread(target=get) for _ in range(1 if not lease else 2)]
    for t in putters + getters:
        t.start()
    for t in putters:
        t.join(60)
    done.set()
    for t in getters:
        t.join(60)
    assert errors == []
    return got


@pytest.mark.parametrize("durability", ["commit", "fsync"])
@pytest.mark.parametrize("lease", [False, True])
def test_many_putters_and_getters_every_item_once_in_order(
        tmp_path: Path, durability: str, lease: bool) -> None:
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(str(path), durability=durability, maxsize=40) as q:
        got = _run(q, lease)
        assert sorted(got) == [(w, k) for w in range(PUTTERS) for k in range(EACH)]
        for w in range(PUTTERS):  # FIFO for each thread's puts
            mine = [k for who, k in got if who == w]
            if not lease:
                assert mine == sorted(mine)
        assert q.qsize() == 0
        stats = q.stats
        assert stats["puts"] == PUTTERS * EACH
        assert stats["gets"] == (0 if lease else PUTTERS * EACH)
        assert stats["unfinished"] == 0
        assert stats["leased"] == 0 and stats["count"] == 0
        assert stats["compressed_size_bytes"] == 0 and stats["raw_size_bytes"] == 0
        joined = threading.Thread(target=q.join)
        joined.start()
        joined.join(5)
        assert not joined.is_alive()
    assert file_counts(path) == Counts(0, 0, 0, 0)


def test_a_put_waiting_for_room_goes_on_when_a_merged_take_frees_it(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(str(path), maxsize=2) as q:
        q.put(1)
        q.put(2)
        returned = threading.Event()

        def put() -> None:
            q.put(3, timeout=10)
            returned.set()

        t = threading.Thread(target=put)
        t.start()
        time.sleep(0.1)
        assert not returned.is_set()
        assert q.get() == 1
        assert returned.wait(5)
        t.join(5)
        assert q.get_many(2) == [2, 3]
        assert q.qsize() == 0
