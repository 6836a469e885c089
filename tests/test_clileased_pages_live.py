"""``peek --leased`` of more items than one engine read holds, while a consumer in another
thread acks, nacks and leases items between two reads: no item that stays leased from start
to end is left out, and none is shown twice."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq.engines.sqlite import SQLiteEngine

from .cli_support import run

Step = Callable[[spoolq.SyncQueue[int], list[spoolq.Message[int]]], None]


def _peek_leased_while(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, leased: int,
                       held_back: int, steps: list[Step],
                       args: tuple[str, ...] = ()) -> tuple[list[int], list[int]]:
    """Lease ``leased`` items (the first ``held_back`` of them given back at once, so
    that they are ready ahead of the others), then run ``peek --leased`` and, right after
    each page it reads, run the next of ``steps`` in a consumer thread that holds the
    leases. Returns the items shown and those that stayed leased throughout."""
    path = str(tmp_path / "jobs.sqlite")
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        q.put_many(list(range(leased + 500)))
    consumer: spoolq.SyncQueue[int] = spoolq.SyncQueue.create(path, name="jobs")
    held = consumer.lease_many(leased, block=False, ttl=600)
    assert len(held) == leased
    consumer.nack(*held[:held_back])
    held = held[held_back:]
    touched: set[int] = set()
    go, done = threading.Semaphore(0), threading.Semaphore(0)
    failures: list[BaseException] = []

    def work() -> None:
        for step in steps:
            go.acquire()
            before = {m.item for m in held}
            try:
                step(consumer, held)
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)
            touched.update(before ^ {m.item for m in held})
            done.release()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    real = SQLiteEngine.peek_leased
    pages = [0]

    def peek_leased(self: SQLiteEngine, queue: str, n: int, offset: int = 0) -> Any:
        page = real(self, queue, n, offset)
        if n > 1 and queue == "jobs" and pages[0] < len(steps):
            pages[0] += 1
            go.release()  # the consumer settles items right after this page
            assert done.acquire(timeout=10)
        return page

    monkeypatch.setattr(SQLiteEngine, "peek_leased", peek_leased)
    try:
        result = run("peek", path, "-q", "jobs", "--leased", "-n", str(leased + 500),
                     "--json", *args)
    finally:
        monkeypatch.undo()
        for _ in range(len(steps) - pages[0]):
            go.release()
        thread.join(10)
        stayed = sorted({m.item for m in held} - touched)
        consumer.close()
    assert not failures, failures
    assert pages[0] == len(steps), "the test's steps did not all run"
    assert result.exit_code == 0, result.output
    shown = [r["item"] for r in json.loads(result.stdout)["records"]]
    return shown, stayed


def _ack_first(k: int) -> Step:
    def step(q: spoolq.SyncQueue[int], held: list[spoolq.Message[int]]) -> None:
        q.ack(*held[:k])
        del held[:k]
    return step


def _lease_again(k: int) -> Step:
    def step(q: spoolq.SyncQueue[int], held: list[spoolq.Message[int]]) -> None:
        held[:0] = q.lease_many(k, block=False, ttl=600)
    return step


def test_acks_of_items_already_shown_leave_no_item_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shown, stayed = _peek_leased_while(tmp_path, monkeypatch, leased=3500, held_back=0,
                                       steps=[_ack_first(300), _ack_first(250),
                                              _ack_first(400)])
    assert len(stayed) == 3500 - 950
    assert sorted(set(shown)) == shown  # FIFO order, none twice
    assert set(stayed) <= set(shown), sorted(set(stayed) - set(shown))[:10]


def test_acks_in_the_middle_and_new_leases_ahead_show_none_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def ack_middle(q: spoolq.SyncQueue[int], held: list[spoolq.Message[int]]) -> None:
        picked = held[1200:1500:2]  # between the page read and the next one
        q.ack(*picked)
        del held[1200:1500:2]

    shown, stayed = _peek_leased_while(tmp_path, monkeypatch, leased=3500, held_back=400,
                                       steps=[_lease_again(200), ack_middle,
                                              _lease_again(200)])
    assert sorted(set(shown)) == shown
    assert set(stayed) <= set(shown), sorted(set(stayed) - set(shown))[:10]


def test_peek_leased_from_an_offset_with_acks_before_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shown, stayed = _peek_leased_while(tmp_path, monkeypatch, leased=3000, held_back=0,
                                       steps=[_ack_first(600), _ack_first(300)],
                                       args=("--offset", "500"))
    assert shown[0] == 500
    assert sorted(set(shown)) == shown
    assert {i for i in stayed if i >= 500} <= set(shown)


def test_peek_leased_while_a_consumer_thread_keeps_settling_items(tmp_path: Path) -> None:
    """No hook: the consumer acks, nacks and leases again as fast as it can while the
    command reads its pages; the items it leaves alone all show."""
    path = str(tmp_path / "jobs.sqlite")
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        q.put_many(list(range(6000)))  # 1000 stay ready: a lease always finds some
    consumer: spoolq.SyncQueue[int] = spoolq.SyncQueue.create(path, name="jobs")
    held = consumer.lease_many(5000, block=False, ttl=600)
    keep = {m.item for m in held if m.item % 7 == 3}  # never settled
    busy = [m for m in held if m.item not in keep]
    stop = threading.Event()
    rounds = [0]

    failures: list[BaseException] = []

    def settle() -> None:
        try:
            while not stop.is_set() and busy:
                batch, busy[:] = busy[:40], busy[40:]
                consumer.ack(*batch[:30])
                consumer.nack(*batch[30:])
                busy.extend(consumer.lease_many(10, block=False, ttl=600))
                rounds[0] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    thread = threading.Thread(target=settle, daemon=True)
    thread.start()
    try:
        result = run("peek", path, "-q", "jobs", "--leased", "-n", "5000", "--json")
    finally:
        stop.set()
        thread.join(10)
        consumer.close()
    assert not failures, failures
    assert result.exit_code == 0, result.output
    shown = [r["item"] for r in json.loads(result.stdout)["records"]]
    assert sorted(set(shown)) == shown
    assert keep <= set(shown), sorted(keep - set(shown))[:10]
    assert rounds[0] > 0
