"""The queue core under several handles on one file: leases reaped by one handle while
others settle theirs, dead letters, and the counts join() relies on."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq.engines import Engine, open_engine


class ActsBeforeExpire:
    """Delegates to a real engine; ``before_expire``, when set, runs once just before the
    next expire, as another process sharing the file may act at that moment."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.before_expire: Callable[[], None] | None = None

    def expire(self, queue: str, now: float, *, owners: Sequence[str] = (),
               max_attempts: int | None = None) -> int:
        hook, self.before_expire = self.before_expire, None
        if hook is not None:
            hook()
        return self._inner.expire(queue, now, owners=owners, max_attempts=max_attempts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _wait_past(deadline: float) -> None:
    while time.time() <= deadline:
        time.sleep(0.02)


def test_dead_letters_of_another_handle_are_not_counted_as_reaped(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path, max_attempts=1) as other:
        other.put("x")
        x_lease = other.lease(ttl=1.0)
        leased_at = time.time()
        engine = ActsBeforeExpire(open_engine(path))
        with spoolq.SyncQueue.create(path, engine=engine, max_attempts=3) as q:
            assert q.stats["leased"] == 1  # x: present at open, so join() waits for it
            other.put_many(["y1", "y2"])  # not this handle's: its join() never waits for them
            ys = other.lease_many(2, ttl=60)
            assert [m.item for m in ys] == ["y1", "y2"]
            q.put("z")
            assert q.stats["unfinished"] == 2
            _wait_past(leased_at + 1.05)
            # Just as this handle reaps x (its lease ran out, a delivery to come again),
            # the other handle's nacks move y1 and y2 to the dead letters.
            engine.before_expire = lambda: other.nack(*ys)
            assert q.get_nowait() == "x"
            assert q.peek(3, dead=True) == ["y1", "y2"]
            assert x_lease.attempts == 1
            assert q.stats["redelivered"] == 1
            q.task_done()
            # z is still to be processed: join() must not return.
            assert q.qsize() == 1
            assert q.stats["unfinished"] == 1
            assert q.get_nowait() == "z"
            q.task_done()
            assert q.stats["unfinished"] == 0


class _Zlib:
    """A compressor the reading handle is not given: its records cannot be decoded there."""

    name = "tests.zlib"

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decompress(self, data: bytes) -> bytes:
        return zlib.decompress(data)


class RefusesRestore:
    """Delegates to a real engine; the next ``failures`` restores raise LockTimeout, as
    SQLite does while another process holds its write lock too long."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.failures = 0

    def restore(self, queue: str, records: Sequence[Any]) -> None:
        if self.failures:
            self.failures -= 1
            raise spoolq.LockTimeout("database is locked")
        self._inner.restore(queue, records)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _mixed_queue(path: str) -> None:
    """good 1, a record of a compressor readers lack, good 2."""
    with spoolq.SyncQueue.create(path) as q:
        q.put("good 1")
    with spoolq.SyncQueue.create(path, compressor=_Zlib(), compress_threshold=0) as w:
        w.put("unreadable " * 50)
    with spoolq.SyncQueue.create(path, compressor="zstd") as q:
        q.put("good 2")


def test_items_taken_with_an_undecodable_one_reach_the_caller_when_setting_it_aside_fails(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    _mixed_queue(path)
    engine = RefusesRestore(open_engine(path))
    with spoolq.SyncQueue.create(path, engine=engine, compressor="zstd") as q:
        engine.failures = 1
        # The two good items left the file with the take: they must reach the caller.
        assert q.get_many(3, block=False) == ["good 1", "good 2"]
        assert q.stats["gets"] == 2
        assert q.qsize() == 0


def test_a_take_of_undecodable_records_alone_raises_when_setting_them_aside_fails(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path, compressor=_Zlib(), compress_threshold=0) as w:
        w.put("unreadable " * 50)
    engine = RefusesRestore(open_engine(path))
    with spoolq.SyncQueue.create(path, engine=engine, compressor="zstd") as q:
        engine.failures = 1
        with pytest.raises(spoolq.LockTimeout):
            q.get_nowait()


class ActsBeforeRestore:
    """Delegates to a real engine; ``before_restore``, when set, runs once just before the
    next restore, as another process sharing the file may act at that moment."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.before_restore: Callable[[], None] | None = None

    def restore(self, queue: str, records: Sequence[Any]) -> None:
        hook, self.before_restore = self.before_restore, None
        if hook is not None:
            hook()
        self._inner.restore(queue, records)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_an_undecodable_record_that_stays_in_the_queue_is_not_counted_finished(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path) as q:
        q.put("old")
    with spoolq.SyncQueue.create(path, compressor=_Zlib(), compress_threshold=0) as w:
        w.put("unreadable " * 50)
    with spoolq.SyncQueue.create(path, compressor="zstd") as other:
        old = other.lease()
        engine = ActsBeforeRestore(open_engine(path))
        with spoolq.SyncQueue.create(path, engine=engine, compressor="zstd") as q:
            assert q.stats["unfinished"] == 2
            # While this get sets the unreadable record aside, the other handle gives the
            # older item back: it comes first again, and the unreadable record stays in
            # the queue for the next take to set aside.
            engine.before_restore = lambda: other.nack(old)
            assert q.get_nowait() == "old"
            assert q.peek(3, dead=True) == []
            assert q.stats["unfinished"] == 2
            q.task_done()
            assert q.stats["unfinished"] == 1
            with pytest.raises(spoolq.Empty):
                q.get_nowait()  # sets the unreadable record aside
            assert q.stats["dead"] == 1
            assert q.stats["unfinished"] == 0


def test_leases_a_reap_moves_to_the_dead_letters_are_finished_not_redelivered(
        path: str) -> None:
    with spoolq.SyncQueue.create(path, max_attempts=1) as q:
        q.put_many(["a", "b", "c"])
        leases = q.lease_many(2, ttl=0.05)
        assert len(leases) == 2
        time.sleep(0.1)
        assert q.get(timeout=5) == "c"  # the take reaps the leases that ran out first
        assert q.stats["dead"] == 2
        assert q.stats["redelivered"] == 0
        assert q.stats["unfinished"] == 1
        q.task_done()
        assert q.stats["unfinished"] == 0
        assert sorted(q.peek(5, dead=True)) == ["a", "b"]


class CountsDeadPeeks:
    """Delegates to a real engine; counts the peeks at the dead letters of ``default``."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.dead_peeks = 0

    def peek(self, queue: str, n: int, offset: int = 0) -> list[Any]:
        if queue == "default.dead":
            self.dead_peeks += 1
        return self._inner.peek(queue, n, offset)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_reap_reads_no_dead_letters_when_they_are_many() -> None:
    """Reading past every dead letter at each reap that buries one took a reap (and the
    gets waiting for it) hundreds of milliseconds at 300,000 dead letters."""
    engine = CountsDeadPeeks(open_engine(":memory:"))
    engine.append("default.dead", [b"old"] * 10_001, [3] * 10_001, time.time())
    with spoolq.SyncQueue.create(":memory:", engine=engine,  # type: ignore[arg-type]
                                 max_attempts=1) as q:
        q.put_many(["a", "b"])
        assert len(q.lease_many(1, ttl=0.05)) == 1
        time.sleep(0.1)
        assert q.get(timeout=5) == "b"  # the take reaps the lease that ran out first
        assert engine.dead_peeks == 0
        assert (q.stats["dead"], q.stats["redelivered"], q.stats["unfinished"]) == (10_002, 0, 1)
