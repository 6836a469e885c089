"""A handle's periodic reaps and looks for dead owners are spaced out when the engine
answers them slowly (very many leases, a slow server): they take a bounded share of the
handle's time and of the engine's write lock, and still run."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import spoolq
import spoolq._reaping
from spoolq.engines import Engine, Lease, open_engine


class SlowLeaseCalls:
    """Delegates to a real engine; ``expire`` and ``owners`` take ``delay`` seconds more,
    and are counted."""

    def __init__(self, inner: Engine, delay: float) -> None:
        self._inner, self.delay = inner, delay
        self.name = inner.name
        self.expires: list[float] = []
        self.owner_looks: list[float] = []

    def expire(self, queue: str, now: float, *, owners: Sequence[str] = (),
               max_attempts: int | None = None) -> int:
        self.expires.append(time.monotonic())
        time.sleep(self.delay)
        return self._inner.expire(queue, now, owners=owners, max_attempts=max_attempts)

    def owners(self, queue: str) -> dict[str, int]:
        self.owner_looks.append(time.monotonic())
        time.sleep(self.delay)
        return self._inner.owners(queue)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _wait_in_gets(q: spoolq.SyncQueue[Any], seconds: float) -> None:
    """Wait ``seconds`` in gets on an empty queue, which reap as they wait."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        with contextlib.suppress(spoolq.Empty):
            q.get(timeout=0.2)


def _queue_with_a_held_lease(tmp_path: Path, delay: float, until: float
                             ) -> tuple[spoolq.SyncQueue[Any], SlowLeaseCalls]:
    path = tmp_path / "q.sqlite"
    with spoolq.SyncQueue.create(path) as q:
        q.put("held")
        q.put("other")
    held = open_engine(path)
    try:  # leased by a process of another host: never taken for a dead one
        held.take("default", 1, time.time(), Lease("elsewhere:1:2:x", until))
    finally:
        held.close()
    slow = SlowLeaseCalls(open_engine(path), delay)
    return spoolq.SyncQueue.create(path, engine=slow, poll_interval=0.05), slow


def test_slow_reaps_are_spaced_to_a_twentieth_of_the_time(tmp_path: Path) -> None:
    q, slow = _queue_with_a_held_lease(tmp_path, 0.1, time.time() + 600)
    try:
        assert q.get(timeout=1) == "other"
        slow.expires.clear()
        slow.owner_looks.clear()
        _wait_in_gets(q, 4.0)
        # Every 0.5 s (and owners every 2 s) with quick answers; a 0.1 s answer waits
        # about 2 s (19 times as long) before the next.
        assert 1 <= len(slow.expires) <= 3, slow.expires
        gaps = [b - a for a, b in zip(slow.expires, slow.expires[1:], strict=False)]
        assert all(gap >= 1.9 for gap in gaps), gaps
        assert len(slow.owner_looks) <= 2, slow.owner_looks
    finally:
        q.close()


def test_a_spaced_reap_still_returns_a_lease_that_ran_out(tmp_path: Path) -> None:
    q, _ = _queue_with_a_held_lease(tmp_path, 0.1, time.time() + 1.0)
    try:
        assert q.get(timeout=1) == "other"
        assert q.get(timeout=8) == "held"  # its lease ended after 1 s
    finally:
        q.close()


def test_quick_reaps_keep_their_interval(tmp_path: Path) -> None:
    q, slow = _queue_with_a_held_lease(tmp_path, 0.0, time.time() + 600)
    try:
        assert q.get(timeout=1) == "other"
        slow.expires.clear()
        _wait_in_gets(q, 2.5)
        assert len(slow.expires) >= 3, slow.expires  # every 0.5 s: 5 of them
    finally:
        q.close()


def test_a_slow_reap_puts_off_the_next_by_at_most_the_longest_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spoolq._reaping, "_LONGEST_WAIT", 0.3)
    q, slow = _queue_with_a_held_lease(tmp_path, 0.1, time.time() + 600)
    try:
        assert q.get(timeout=1) == "other"
        slow.expires.clear()
        _wait_in_gets(q, 3.0)
        # Each takes 0.1 s and the next comes 0.5 s (the usual interval) after the last
        # began, not 1.9 s after it ended.
        assert len(slow.expires) >= 4, slow.expires
    finally:
        q.close()
