"""SyncQueue under threads: closes, shutdowns and puts racing calls that wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import SyncQueue
from spoolq.engines import Engine, WaitCancel, open_engine

from .servers import ThreadedServer
from .waiting import in_thread


class _Holding:
    """Delegates to a real engine. A call named in ``hold`` sets ``entered`` and waits
    for ``go`` before it runs; ``wait_ready`` waits for ``go`` before it starts, so a
    test can act between a get's decision to long-poll and the engine's wait."""

    def __init__(self, inner: Engine, *hold: str) -> None:
        self._inner = inner
        self.name = inner.name
        self.hold = set(hold)
        self.entered = threading.Event()
        self.go = threading.Event()

    def _gate(self, call: str) -> None:
        if call in self.hold:
            self.entered.set()
            assert self.go.wait(5), f"{call} was held for too long"

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        self._gate("append")
        return self._inner.append(queue, records, raw_sizes, now)

    def wait_ready(self, queue: str, timeout: float, cancel: WaitCancel | None = None) -> bool:
        self._gate("wait_ready")
        return bool(self._inner.wait_ready(queue, timeout, cancel))  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# ---- closing --------------------------------------------------------------------------------

def test_closes_from_several_threads_at_once_all_return(tmp_path: Path) -> None:
    # Every closer got past the "already closed?" check, and all but the first then
    # released the leases again on the closed engine.
    for round_ in range(3):
        q: SyncQueue[int] = SyncQueue.create(str(tmp_path / f"q{round_}.sqlite"))
        q.put_many([1, 2])
        q.lease()
        start = threading.Barrier(5)
        closers = [in_thread(lambda q=q, start=start: (start.wait(5), q.close()))
                   for _ in range(4)]
        with q._core.lock:  # the first closer holds the file while the others arrive
            start.wait(5)
            time.sleep(0.02)
        for thread, out in closers:
            thread.join(5)
            assert not isinstance(out[0], BaseException), out[0]
        with SyncQueue.create(str(tmp_path / f"q{round_}.sqlite")) as again:
            assert again.get_many(None, block=False) == [1, 2]


def test_a_put_waiting_for_room_raises_shutdown_when_the_queue_closes(tmp_path: Path) -> None:
    # close() did not wait for puts waiting for room: one that woke up after the file
    # was closed re-read the counts from it and raised ClosedError instead of the
    # QueueShutDown that close() promises to calls waiting in other threads.
    q: SyncQueue[int] = SyncQueue.create(str(tmp_path / "q.sqlite"), maxsize=1,
                                         poll_interval=0.2)
    q.put(0)
    core = q._core
    refresh_due = core.refresh_due
    waiting, closed = threading.Event(), threading.Event()

    def late_refresh_due() -> bool:
        waiting.set()
        if q._closed:
            # Woken by close() just as its poll interval ran out: it looks at the file
            # once the file is closed (if close() does not wait for it).
            closed.wait(0.3)
            return True
        return refresh_due()

    core.refresh_due = late_refresh_due  # type: ignore[method-assign]
    putter, out = in_thread(lambda: q.put(1, timeout=5))
    assert waiting.wait(5)  # the put waits for room
    deadline = time.monotonic() + 5
    while not q._sleepers and time.monotonic() < deadline:  # asleep until the next poll
        time.sleep(0.001)
    q.close()
    closed.set()
    putter.join(5)
    assert isinstance(out[0], spoolq.QueueShutDown), repr(out[0])


def test_a_buffered_put_racing_close_is_stored_or_refused(tmp_path: Path) -> None:
    # A put that got past the shutdown check added its record to the buffer while
    # close() wrote the buffer for the last time: it returned, and the item was lost.
    path = str(tmp_path / "q.sqlite")
    engine = _Holding(open_engine(path))
    q: SyncQueue[str] = SyncQueue.create(path, engine=engine, durability="buffer",
                                         flush_interval=60)
    q.put("first")
    core = q._core
    put_now = core.put_now
    putting = threading.Event()

    def late_put_now(records: list[bytes], sizes: list[int]) -> None:
        putting.set()
        assert engine.entered.wait(5)  # close() is writing the buffer now
        put_now(records, sizes)

    core.put_now = late_put_now  # type: ignore[method-assign]
    engine.hold.add("append")
    putter, put_out = in_thread(lambda: q.put("late"))
    assert putting.wait(5)
    closer, close_out = in_thread(q.close)
    putter.join(5)
    engine.go.set()
    closer.join(5)
    assert close_out == [None]
    with SyncQueue.create(path) as again:
        stored = again.get_many(None, block=False)
    if put_out == [None]:
        assert stored == ["first", "late"], "a put that returned must be stored"
    else:
        assert isinstance(put_out[0], spoolq.ClosedError) and stored == ["first"]


# ---- waking waiting calls -------------------------------------------------------------------

def test_a_buffered_put_wakes_a_get_long_polling_a_server() -> None:
    # The get blocks in the remote engine's long-poll, which a put held in this handle's
    # buffer never reaches: it waited for the long-poll's end (5 s) or the flush.
    with ThreadedServer(":memory:") as server, SyncQueue.create(
            f"{server.url}/jobs", durability="buffer", flush_interval=30) as q:
        engine = _Holding(q._core.engine, "wait_ready")
        q._core.engine = engine  # type: ignore[assignment]
        engine.go.set()
        getter, out = in_thread(lambda: q.get(timeout=4))
        assert engine.entered.wait(5)
        time.sleep(0.05)  # into the server's long-poll
        start = time.monotonic()
        q.put("x")
        getter.join(5)
        assert out == ["x"] and time.monotonic() - start < 1


def test_shutdown_ends_a_get_about_to_long_poll_a_server() -> None:
    # shutdown() cancelled the waits in progress, but not the one the get was about to
    # start: that one ran for its whole long-poll (5 s) or the get's timeout.
    with ThreadedServer(":memory:") as server, SyncQueue.create(f"{server.url}/jobs") as q:
        engine = _Holding(q._core.engine, "wait_ready")
        q._core.engine = engine  # type: ignore[assignment]
        getter, out = in_thread(lambda: q.get(timeout=3))
        assert engine.entered.wait(5)  # decided to long-poll; the wait has not started
        q.shutdown(immediate=True)
        start = time.monotonic()
        engine.go.set()
        getter.join(5)
        assert isinstance(out[0], spoolq.QueueShutDown) and time.monotonic() - start < 1


def test_immediate_shutdown_wakes_join_at_once(tmp_path: Path) -> None:
    # join() slept on a condition shutdown() did not notify: it noticed at its next poll.
    with SyncQueue.create(str(tmp_path / "q.sqlite"), poll_interval=3) as q:
        q.put("never done")
        joiner, out = in_thread(q.join)
        time.sleep(0.05)  # into its wait (if not, join returns at once and this passes)
        start = time.monotonic()
        q.shutdown(immediate=True)
        joiner.join(5)
        assert out == [None] and time.monotonic() - start < 1


@pytest.mark.parametrize("path_kind", ["sqlite", "memory"])
def test_a_put_right_after_a_waiting_get_looked_wakes_it(tmp_path: Path,
                                                         path_kind: str) -> None:
    # The get looked for items (none), then counted itself as sleeping; a put in between
    # saw no sleeper, notified nobody, and the get slept a whole poll interval.
    path = str(tmp_path / "q.sqlite") if path_kind == "sqlite" else ":memory:"
    with SyncQueue.create(path, poll_interval=3) as q:
        core = q._core
        ready_hint = core.ready_hint
        fired, put_done = threading.Event(), threading.Event()

        def put_after_look() -> int:
            seen = ready_hint()
            if q._cond._is_owned() and not fired.is_set():  # type: ignore[attr-defined]
                # The get checks under its lock before it sleeps: put in that gap.
                fired.set()
                threading.Thread(target=lambda: (q.put("x"), put_done.set())).start()
                deadline = time.monotonic() + 5
                while ready_hint() == 0 and time.monotonic() < deadline:
                    time.sleep(0.001)
            return seen

        core.ready_hint = put_after_look  # type: ignore[method-assign]
        start = time.monotonic()
        assert q.get(timeout=2) == "x"
        assert time.monotonic() - start < 1
        assert put_done.wait(5)


@pytest.mark.parametrize("name", [":memory:", "q.sqlite"])
def test_requeue_dead_refuses_ids_that_are_not_ints(tmp_path: Path, name: str) -> None:
    path = name if name == ":memory:" else str(tmp_path / name)
    with SyncQueue.create(path, max_attempts=1) as q:
        q.put("a")
        q.nack(q.lease())
        assert q.stats["dead"] == 1
        for ids in (["x"], [1.0], [None], [True]):
            with pytest.raises(TypeError, match="ids must be an int"):
                q.requeue_dead(ids)  # type: ignore[list-item]
        with pytest.raises(ValueError, match="ids must be >= 0"):
            q.requeue_dead([-1])
        assert q.stats["dead"] == 1 and q.peek(dead=True) == ["a"]
        assert q.requeue_dead() == 1 and q.get() == "a"
