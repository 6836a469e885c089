"""Queues of every file engine on a full file system (a real tmpfs, ENOSPC): a put that
does not fit raises an EngineError naming the full disk, stores nothing of its call and
leaves the queue as it was; takes, acks and nacks work or fail as clearly; once space is
freed, puts work again on the same handle, and the file reopens whole."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolq import EngineError, SyncQueue

from .test_diskfull_mount import fill, free, mounted, says_full

ENGINES = ["sqlite", "lmdb", "dbm", "pickle"]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with mounted(tmp_path) as where:
        yield where


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _items(n: int, size: int, tag: str) -> list[bytes]:
    return [tag.encode() + b"-%d-" % i + os.urandom(size) for i in range(n)]


def _all(q: SyncQueue[bytes]) -> list[bytes]:
    return list(q.peek(10_000))


@pytest.mark.parametrize("leave", [0, 16 << 10, 48 << 10])
def test_a_put_that_does_not_fit_names_the_full_disk_and_stores_nothing(
        small_fs: Path, engine: str, leave: int) -> None:
    path = str(small_fs / f"q.{engine}")
    before = _items(40, 300, "old")
    with SyncQueue[bytes].create(path, serializer="raw") as q:
        q.put_many(before)
        fill(small_fs, leave)
        for _ in range(3):  # a second try fails as the first did, and changes nothing
            with pytest.raises(EngineError) as caught:
                q.put_many(_items(60, 2000, "new"))  # 120 KB: more than is left
            assert says_full(str(caught.value)), str(caught.value)
            assert q.qsize() == 40
            assert _all(q) == before
        free(small_fs)
        after = _items(5, 2000, "later")
        q.put_many(after)  # the same handle writes again once there is room
        assert q.qsize() == 45
        assert _all(q) == before + after
    with SyncQueue[bytes].create(path, serializer="raw") as q:
        assert q.qsize() == 45
        assert _all(q) == before + after
        assert q.get_many(45) == before + after


def test_takes_acks_and_nacks_on_a_full_disk_work_or_fail_clearly(
        small_fs: Path, engine: str) -> None:
    path = str(small_fs / f"q.{engine}")
    items = _items(30, 300, "item")
    gone: list[bytes] = []
    with SyncQueue[bytes].create(path, serializer="raw") as q:
        q.put_many(items)
        first, second = q.lease(ttl=60), q.lease(ttl=60)
        fill(small_fs)
        with pytest.raises(EngineError):
            q.put_many(_items(60, 2000, "new"))
        try:
            gone.append(q.get_nowait())
        except EngineError as exc:
            assert says_full(str(exc)), str(exc)
        try:
            q.ack(first)
            gone.append(first.item)
        except EngineError as exc:
            assert says_full(str(exc)), str(exc)
        try:
            q.nack(second)
        except EngineError as exc:
            assert says_full(str(exc)), str(exc)
        free(small_fs)
    with SyncQueue[bytes].create(path, serializer="raw") as q:
        left = q.get_many(100, timeout=0.1)
    assert sorted(left) == sorted(set(items) - set(gone))
