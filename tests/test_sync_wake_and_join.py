"""SyncQueue's waiting calls look again when a nack's delay ends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import spoolq

from .conftest import queue_path

ENGINES = ["lmdb", "memory", "sqlite"]


@pytest.fixture(params=ENGINES)
def path(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return queue_path(tmp_path, str(request.param))


def _nacked(q: spoolq.SyncQueue[str], delay: float) -> float:
    """Put, lease and nack one item with ``delay``; return when the nack returned."""
    q.put("x")
    msg = q.lease(timeout=5)
    q.nack(msg, delay=delay)
    return time.monotonic()


# ---- a waiting call and the end of a nack's delay ---------------------------------------


@pytest.mark.parametrize("call", ["get", "lease", "get_many", "get_many_n", "lease_many"])
def test_a_waiting_call_takes_a_nacked_item_when_its_delay_ends(path: str, call: str) -> None:
    # It looked again only after the poll interval (3 s here), however short the delay.
    with spoolq.SyncQueue.create(path, poll_interval=3) as q:
        nacked = _nacked(q, 0.2)
        if call == "get":
            assert q.get(timeout=10) == "x"
        elif call == "lease":
            assert q.lease(timeout=10).item == "x"
        elif call == "get_many":
            assert q.get_many(timeout=10) == ["x"]
        elif call == "get_many_n":
            assert q.get_many(1, timeout=10) == ["x"]
        else:
            assert [m.item for m in q.lease_many(5, timeout=10)] == ["x"]
        took = time.monotonic() - nacked
        assert 0.15 <= took < 1.5


def test_a_get_already_waiting_takes_an_item_nacked_meanwhile_when_its_delay_ends(
        path: str) -> None:
    with spoolq.SyncQueue.create(path, poll_interval=3) as q:
        q.put("x")
        msg = q.lease(timeout=5)
        got: list[object] = []
        getter = threading.Thread(target=lambda: got.append(q.get(timeout=10)))
        getter.start()
        time.sleep(0.2)  # the get waits on an empty queue
        q.nack(msg, delay=0.3)
        nacked = time.monotonic()
        getter.join(10)
        took = time.monotonic() - nacked
        assert got == ["x"]
        assert 0.25 <= took < 1.5


def test_several_delays_each_wake_the_waiting_get(path: str) -> None:
    with spoolq.SyncQueue.create(path, poll_interval=3) as q:
        q.put_many(["a", "b"])
        first, second = q.lease_many(2, timeout=5)
        q.nack(second, delay=0.6)
        q.nack(first, delay=0.2)
        started = time.monotonic()
        assert q.get(timeout=10) == "a"
        assert time.monotonic() - started < 1.2
        assert q.get(timeout=10) == "b"
        assert time.monotonic() - started < 1.8


def test_a_timeout_shorter_than_the_delay_still_raises_empty(path: str) -> None:
    with spoolq.SyncQueue.create(path, poll_interval=3) as q:
        _nacked(q, 1.0)
        started = time.monotonic()
        with pytest.raises(spoolq.Empty):
            q.get(timeout=0.3)
        assert time.monotonic() - started < 1.0
        assert q.get(timeout=5) == "x"
