"""SyncQueue and leases as a user of queue.Queue or of a job queue meets them: max_attempts
across handles, and the calls that wait."""

from __future__ import annotations

from pathlib import Path

import pytest

import spoolq
from spoolq import SyncQueue

from .servers import ServerProcess
from .waiting import in_thread

# ---- max_attempts -----------------------------------------------------------------------


def test_a_handle_with_max_attempts_never_leases_an_item_past_it(disk_path: str) -> None:
    # Another handle, without max_attempts (a producer whose join() looks for expired
    # leases, say), gave the item back after its second delivery: the handle with
    # max_attempts=2 delivered it a third and a fourth time.
    with SyncQueue.create(disk_path) as lax, \
            SyncQueue.create(disk_path, max_attempts=2) as strict:
        lax.put_many(["poison", "next"])
        for attempt in (1, 2):
            msg = lax.lease()
            assert (msg.item, msg.attempts) == ("poison", attempt)
            lax.nack(msg)
        got = strict.lease(block=False)
        assert (got.item, got.attempts) == ("next", 1)
        assert strict.peek(dead=True) == ["poison"]
        assert strict.stats["dead"] == 1
        strict.ack(got)
        with pytest.raises(spoolq.Empty):
            strict.lease(block=False)
        assert strict.stats["unfinished"] == 0


def test_lease_many_passes_over_items_past_max_attempts(disk_path: str) -> None:
    with SyncQueue.create(disk_path) as lax, \
            SyncQueue.create(disk_path, max_attempts=1) as strict:
        lax.put_many(["a", "b", "c", "d"])
        lax.nack(*lax.lease_many(2))  # a and b were delivered once
        got = strict.lease_many(3, block=False)
        assert [(m.item, m.attempts) for m in got] == [("c", 1), ("d", 1)]
        assert strict.peek(5, dead=True) == ["a", "b"]
        strict.ack(*got)
        assert strict.qsize() == 0


# ---- a server away ----------------------------------------------------------------------


def test_a_blocked_get_with_items_counted_rides_out_a_server_restart(tmp_path: Path) -> None:
    # The get took its short way (items counted as ready) and raised Unavailable at
    # once, where a blocking get waits for the server until its timeout.
    path = str(tmp_path / "q.sqlite")
    server = ServerProcess(path)
    port = server.port
    with SyncQueue.create(f"{server.url}/jobs") as q:
        q.put_many(["a", "b"])
        server.stop()
        getter, out = in_thread(lambda: q.get(timeout=20))
        getter.join(1.0)
        assert getter.is_alive() and not out
        with ServerProcess(path, port=port):
            getter.join(20)
            assert out == ["a"]
            assert q.get(block=False) == "b"


def test_a_get_many_holding_part_of_its_batch_rides_out_a_server_restart(
        tmp_path: Path) -> None:
    # get_many(3) held "a" when the server went away: it raised Unavailable, and "a",
    # removed on the server and given back to no one, was lost.
    path = str(tmp_path / "q.sqlite")
    server = ServerProcess(path)
    port = server.port
    with SyncQueue.create(f"{server.url}/jobs") as q:
        q.put("a")
        getter, out = in_thread(lambda: q.get_many(3, timeout=20))
        getter.join(0.5)  # it holds "a" and waits for two more
        server.stop()
        getter.join(1.0)
        assert getter.is_alive() and not out
        with ServerProcess(path, port=port), SyncQueue.create(f"{server.url}/jobs") as other:
            other.put_many(["b", "c"])
            getter.join(20)
        assert out == [["a", "b", "c"]]


def test_a_get_many_holding_part_of_its_batch_returns_it_when_the_server_stays_away(
        tmp_path: Path) -> None:
    server = ServerProcess(str(tmp_path / "q.sqlite"))
    with SyncQueue.create(f"{server.url}/jobs") as q:
        q.put("a")
        getter, out = in_thread(lambda: q.get_many(3, timeout=2))
        getter.join(0.5)
        server.stop()
        getter.join(20)
        assert out == [["a"]]
