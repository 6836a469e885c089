"""What docs/leases.md, docs/batcher.md and the Leases and Batcher parts of docs/api.md
promise, where no other test holds the code to it: dead letters' reasons and attempt
counts, who may settle a lease, late acks, the place of a delayed nack, requeued dead
letters, Message equality, and the Batcher's defaults, all-or-none adds and stats."""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import spoolq
from spoolq import Batcher, SyncQueue
from spoolq.engines import open_engine
from spoolq.engines.base import dead_queue_name

from .cli_support import run_process
from .conftest import queue_path


@pytest.fixture(params=["memory", "sqlite", "lmdb"])
def qpath(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return queue_path(tmp_path, str(request.param))


@pytest.fixture(params=["sqlite", "lmdb"])
def fpath(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A file that several handles (and processes) open at once."""
    return queue_path(tmp_path, str(request.param))


def _dead_letters(path: str, name: str = "default") -> list[tuple[int, str | None]]:
    """The attempt count and reason of each dead letter, oldest first."""
    engine = open_engine(path, read_only=True)
    try:
        return [(r.attempts, r.reason) for r in engine.peek(dead_queue_name(name), 20)]
    finally:
        engine.close()


# ---- dead letters: reason and attempt count (docs/leases.md, "Dead letters") -------------


def test_dead_letters_keep_the_reason_and_attempt_count_of_each_way_in(fpath: str) -> None:
    with SyncQueue.create(fpath, max_attempts=2, poll_interval=0.02) as q, \
            SyncQueue.create(fpath) as lax:
        q.put_many(["nacked", "past", "expired", "next"])
        q.nack(q.lease())
        q.nack(q.lease())  # its second failed delivery
        # A handle without max_attempts delivers "past" twice and gives it back each time.
        for attempt in (1, 2):
            msg = lax.lease(block=False)
            assert (msg.item, msg.attempts) == ("past", attempt)
            lax.nack(msg)
        first = q.lease(ttl=0.05)  # passes over "past": its third take is past the limit
        assert (first.item, first.attempts) == ("expired", 1)
        time.sleep(0.1)
        second = q.lease(timeout=3, ttl=0.05)
        assert (second.item, second.attempts) == ("expired", 2)
        time.sleep(0.1)
        got = q.lease(timeout=3)
        assert (got.item, got.attempts) == ("next", 1)
        q.ack(got)
        with pytest.raises(spoolq.Empty):  # its reaping meanwhile ends the expired lease
            q.lease(timeout=0.5)
        assert q.peek(5, dead=True) == ["nacked", "past", "expired"]
        assert q.stats["dead"] == 3
    assert _dead_letters(fpath) == [(2, "nacked"), (3, "max_attempts reached"),
                                    (2, "lease expired")]


HOLDER = textwrap.dedent("""
    import sys, time, spoolq
    q = spoolq.SyncQueue.create(sys.argv[1], max_attempts=1)
    msg = q.lease(ttl=3600)
    print(msg.item, msg.attempts, flush=True)
    time.sleep(60)
""")


def test_the_lease_of_a_killed_process_at_max_attempts_is_a_dead_letter_named_owner_died(
        fpath: str) -> None:
    with SyncQueue.create(fpath) as q:
        q.put_many(["held", "after"])
    with subprocess.Popen([sys.executable, "-c", HOLDER, fpath],
                          stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        assert child.stdout.readline().split() == ["held", "1"]
        child.kill()
        child.wait(10)
    with SyncQueue.create(fpath, max_attempts=1) as q:
        msg = q.lease(block=False)
        assert (msg.item, msg.attempts) == ("after", 1)
        q.ack(msg)
        assert (q.stats["leased"], q.stats["dead"]) == (0, 1)
        assert q.peek(dead=True) == ["held"]
    assert _dead_letters(fpath) == [(1, "owner died")]


def test_requeued_dead_letters_go_to_the_tail_and_the_dead_queue_is_an_ordinary_one(
        fpath: str) -> None:
    with SyncQueue.create(fpath, name="resize", max_attempts=1) as q:
        q.put_many(["a", "b", "c"])
        q.nack(q.lease())
        q.nack(q.lease())
        assert q.peek(5) == ["c"] and q.stats["dead"] == 2
        with SyncQueue.create(fpath, name="resize.dead") as dead:
            assert dead.get_nowait() == "a"
        q.put("d")
        assert q.requeue_dead() == 1
        msgs = q.lease_many(5, block=False)
        assert [(m.item, m.attempts) for m in msgs] == [("c", 1), ("d", 1), ("b", 1)]
        q.nack(*msgs)
        assert q.purge(dead=True) == 3
        assert (q.stats["dead"], q.qsize()) == (0, 0)


# ---- settling (docs/leases.md, docs/api.md "ack") ----------------------------------------


def test_another_handle_on_the_same_queue_cannot_settle_a_lease(fpath: str) -> None:
    with SyncQueue.create(fpath) as owner, SyncQueue.create(fpath) as other:
        owner.put("x")
        msg = owner.lease()
        with pytest.raises(spoolq.LeaseError, match="another queue handle"):
            other.ack(msg)
        with pytest.raises(spoolq.LeaseError, match="another queue handle"):
            other.nack(msg)
        assert other.stats["acks"] == other.stats["nacks"] == 0
        with pytest.raises(spoolq.Empty):
            other.lease(block=False)
        owner.ack(msg)
        assert (owner.stats["acks"], owner.stats["leased"], owner.qsize()) == (1, 0, 0)


def test_a_call_settles_the_held_leases_of_a_batch_with_another_handles_message(
        fpath: str) -> None:
    """docs/leases.md: "A call settles every message whose lease this handle still holds,
    then raises LeaseError naming the ids of the others"; a message another handle leased
    is one of the others."""
    with SyncQueue.create(fpath) as a, SyncQueue.create(fpath) as b:
        a.put_many(["mine", "theirs", "nacked"])
        mine, theirs, nacked = a.lease(), b.lease(), a.lease()
        with pytest.raises(spoolq.LeaseError, match=rf"\[{theirs.id}\].*another queue handle"):
            a.ack(mine, theirs)
        with pytest.raises(spoolq.LeaseError, match=rf"\[{theirs.id}\]"):
            a.nack(theirs, nacked)
        assert (a.stats["acks"], a.stats["nacks"]) == (1, 1)
        again = a.lease(block=False)
        assert (again.item, again.attempts) == ("nacked", 2)
        b.ack(theirs)
        a.ack(again)
    with SyncQueue.create(fpath) as fresh:
        assert (fresh.stats["leased"], fresh.qsize()) == (0, 0)


def test_ack_settles_what_it_holds_names_the_others_and_settles_a_repeat_once(
        qpath: str) -> None:
    with SyncQueue.create(qpath) as q:
        q.put_many(["done", "held", "later"])
        done = q.lease()
        q.ack(done)
        held = q.lease()
        with pytest.raises(spoolq.LeaseError, match=rf"message\(s\) \[{done.id}\]:"):
            q.ack(done, held, held)
        assert (q.stats["acks"], q.stats["leased"]) == (2, 0)
        assert q.get_nowait() == "later"


def test_a_lease_past_its_ttl_can_still_be_acked_until_it_is_given_back(qpath: str) -> None:
    with SyncQueue.create(qpath) as q:
        q.put_many(["slow", "next"])
        msg = q.lease(ttl=0.05)
        time.sleep(0.15)
        q.ack(msg)  # nothing returned it or delivered it again meanwhile
        assert (q.stats["acks"], q.stats["leased"]) == (1, 0)
        assert q.get_nowait() == "next"
        with pytest.raises(spoolq.Empty):
            q.get_nowait()


def test_a_delayed_nack_keeps_its_place_ahead_of_later_items(qpath: str) -> None:
    with SyncQueue.create(qpath) as q:
        q.put_many([1, 2, 3])
        q.nack(q.lease(), delay=0.2)
        assert q.get_nowait() == 2
        time.sleep(0.3)
        again = q.lease(block=False)
        assert (again.item, again.attempts) == (1, 2)
        q.ack(again)
        assert q.get_nowait() == 3


# ---- Message (docs/leases.md) ------------------------------------------------------------


def test_a_message_keeps_its_fields_after_close_and_equals_its_copies(qpath: str) -> None:
    with SyncQueue.create(qpath, name="resize") as q:
        q.put_many([float("nan"), {"big": [1, 2]}])
        msgs = q.lease_many(2)
        q.ack(msgs[1])
    nan_msg, acked = msgs
    assert (acked.item, acked.attempts, acked.queue) == ({"big": [1, 2]}, 1, "resize")
    assert acked.enqueued_at <= time.time() and nan_msg.queue == "resize"
    for msg in msgs:
        # The same delivery, as a process that was handed a message returns it.
        twin = pickle.loads(pickle.dumps(msg))
        assert twin == msg and hash(twin) == hash(msg) and twin in set(msgs)


def test_messages_of_two_files_alike_in_id_attempts_and_time_are_not_equal(
        tmp_path: Path) -> None:
    """A migrate keeps enqueue times and a put_many stamps one time for all its items, so
    two files can deliver other items under the same id, attempts and time: a consumer of
    both keeping messages in a set must not take one for the other."""
    old, new = str(tmp_path / "old.sqlite"), str(tmp_path / "new.sqlite")
    with SyncQueue.create(old) as q:
        q.put_many(["job-1", "job-2"])
    with SyncQueue.create(new) as q:
        q.put("warm-up")
        q.get()  # the next id of this file is 2
    moved = run_process("migrate", "--append", old, new)
    assert moved.returncode == 0, moved.stderr
    with SyncQueue.create(old) as a, SyncQueue.create(new) as b:
        a.get()
        ma, mb = a.lease(timeout=5), b.lease(timeout=5)
        assert (ma.id, ma.attempts, ma.enqueued_at) == (mb.id, mb.attempts, mb.enqueued_at)
        assert (ma.item, mb.item) == ("job-2", "job-1")
        assert ma != mb and len({ma, mb}) == 2
        a.ack(ma)
        b.ack(mb)


# ---- Batcher (docs/batcher.md, docs/api.md "Batcher") ------------------------------------


def test_the_documented_batcher_defaults() -> None:
    params = inspect.signature(Batcher).parameters
    assert {name: p.default for name, p in params.items() if name != "on_flush"} == {
        "queue": None, "max_batch_size": 100, "flush_interval": 10.0, "name": "batcher",
        "logger": None, "retry_delay": 0.5, "max_retry_delay": 60.0, "lease_ttl": 300.0}


async def _until(condition: Callable[[], bool], limit: float = 30.0) -> None:
    """Poll until ``condition`` holds, at most ``limit`` seconds (a loaded machine may
    take long; the poll ends as soon as it holds)."""
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def test_without_a_queue_the_batcher_uses_name_spoolq_sqlite_in_the_working_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SyncQueue.create(tmp_path / "metrics.spoolq.sqlite", name="metrics") as q:
        q.put("left by an earlier run")
    monkeypatch.chdir(tmp_path)
    got: list[list[object]] = []
    async with Batcher(got.append, name="metrics", flush_interval=60) as b:
        assert b.queue.name == "metrics"
        # A start flushes what an earlier run left, at once (well before the interval).
        await _until(lambda: bool(got))
        assert got == [["left by an earlier run"]]
        await b.add_many(range(99))
        await asyncio.sleep(0.3)
        assert len(got) == 1  # 99 items: not a full batch of the default size
        await b.add(99)
        await _until(lambda: len(got) == 2)
        assert got[1:] == [list(range(100))]
    assert os.listdir(tmp_path) == ["metrics.spoolq.sqlite"]


async def test_add_many_with_an_item_the_queue_cannot_store_stores_none(qpath: str) -> None:
    got: list[list[object]] = []
    async with Batcher(got.append, queue=qpath, flush_interval=60) as b:
        await b.add("first")
        with pytest.raises(spoolq.SerializationError):
            await b.add_many(["a", object(), "b"])
        assert b.stats["queued"] == 1 and await b.queue.peek(5) == ["first"]
        assert await b.flush()
    assert got == [["first"]]


async def test_stats_count_the_batch_in_flight_and_time_the_flush(qpath: str) -> None:
    seen: list[dict[str, object]] = []
    b: Batcher[int]

    async def sink(batch: list[int]) -> None:
        seen.append(dict(b.stats))

    b = Batcher(sink, queue=qpath, max_batch_size=2, flush_interval=60)
    async with b:
        await b.add_many([1, 2, 3])
        before = time.time()
        assert await b.flush()
        after = time.time()
        assert [s["queued"] for s in seen] == [3, 1]  # the batch being sent counts
        stats = b.stats
        last = stats["last_flush_time"]
        assert isinstance(last, float) and before <= last <= after
        assert {k: stats[k] for k in ("flushes", "items", "failures", "queued", "running")} \
            == {"flushes": 2, "items": 3, "failures": 0, "queued": 0, "running": True}
    assert not b.stats["running"]
