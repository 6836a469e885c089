"""How puts are written: group commit of many callers' records, an append that stores
part of a batch before it fails, and puts of a process forked with records pending."""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import Queue, SyncQueue
from spoolq.engines import Engine, open_engine
from spoolq.engines.base import STORED_RECORDS


class RequestsEngine:
    """Delegates to a real engine, storing each record of an append in its own
    transaction, as the remote engine does with a batch larger than one request. Each
    append takes the next entry of ``script``: None stores every record; a number k
    stores the first k, then raises an EngineError (a lost connection) that says how
    many were stored, as the remote engine's does. The append after ``hold()`` waits
    for ``release()``."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.script: list[int | None] = []
        self.appends: list[int] = []
        self._held = threading.Event()
        self._hold = False
        self._go = threading.Event()

    def hold(self) -> None:
        self._hold, self._go = True, threading.Event()
        self._held.clear()

    def wait_held(self) -> None:
        assert self._held.wait(5)

    def release(self) -> None:
        self._go.set()

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        if self._hold:
            self._hold = False
            self._held.set()
            assert self._go.wait(10), "never released"
        self.appends.append(len(records))
        limit = self.script.pop(0) if self.script else None
        ids: list[int] = []
        try:
            for record, size in zip(records, raw_sizes, strict=True):
                if limit is not None and len(ids) >= limit:
                    raise spoolq.EngineError("connection lost")
                ids += self._inner.append(queue, [record], [size], now)
        except spoolq.EngineError as exc:
            if ids:
                setattr(exc, STORED_RECORDS, len(ids))
            raise
        return ids

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def _group_of_four(path: str, script: list[int | None]) -> tuple[list[Any], list[str]]:
    """Put "first" alone, then t0..t3 from four tasks in one group commit that meets
    ``script``; return the four results and what the file holds afterwards."""
    engine = RequestsEngine(open_engine(path))
    async with await Queue.create(path, engine=engine) as q:
        engine.hold()
        first = asyncio.create_task(q.put("first"))
        await asyncio.get_running_loop().run_in_executor(None, engine.wait_held)
        others = asyncio.gather(*(q.put(f"t{i}") for i in range(4)), return_exceptions=True)
        while q.qsize() < 5:  # all four wait for the next group commit
            await asyncio.sleep(0)
        engine.script = [None, *script]  # "first" is stored
        engine.release()
        await first
        results = await asyncio.wait_for(others, 5)
        assert engine.appends[1] == 4  # the four were one group
    with SyncQueue.create(path) as q:
        return results, q.peek(100)


async def test_a_put_stored_before_the_group_commit_failed_does_not_raise(
        tmp_path: Path) -> None:
    # The batch's first record is stored, then the connection is lost for good: t0 is
    # in the queue, so its put must return; t1..t3 are not, so theirs raise. t0's put
    # raised EngineError too, and a caller that put it again stored it twice.
    path = str(tmp_path / "q.sqlite")
    results, stored = await _group_of_four(path, [1, 0, 0, 0, 0, 0, 0])
    assert stored == ["first", "t0"]
    assert results[0] is None
    assert all(isinstance(r, spoolq.EngineError) for r in results[1:])


async def test_a_put_of_a_group_all_stored_before_the_failure_does_not_raise(
        tmp_path: Path) -> None:
    # Every record of the group is stored and the append fails after its last request
    # (an answer lost): no put may raise.
    path = str(tmp_path / "q.sqlite")
    results, stored = await _group_of_four(path, [4, 0, 0, 0])
    assert stored == ["first", "t0", "t1", "t2", "t3"]
    assert results == [None] * 4


async def test_records_stored_by_a_failed_write_apart_are_not_written_again(
        tmp_path: Path) -> None:
    # The batch stores t0 and fails; written apart, [t1] is stored, and [t2, t3] stores
    # t2 before failing again. t2 was then written again with the half that failed.
    path = str(tmp_path / "q.sqlite")
    results, stored = await _group_of_four(path, [1, None, 1, None, None])
    assert results == [None] * 4
    assert stored == ["first", "t0", "t1", "t2", "t3"]


def test_threads_a_put_stored_before_the_group_commit_failed_does_not_raise(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    engine = RequestsEngine(open_engine(path))
    results: dict[str, BaseException | None] = {}

    def put(item: str) -> None:
        try:
            q.put(item)
        except spoolq.EngineError as exc:
            results[item] = exc
        else:
            results[item] = None

    with SyncQueue.create(path, engine=engine) as q:  # type: ignore[arg-type]
        engine.hold()
        first = threading.Thread(target=put, args=("first",))
        first.start()
        engine.wait_held()
        threads = [threading.Thread(target=put, args=(f"t{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        while q.qsize() < 4:  # "first", held in its write, is not counted yet
            threading.Event().wait(0.001)
        engine.script = [None, 1, 0, 0, 0, 0, 0]
        engine.release()
        for thread in [first, *threads]:
            thread.join(5)
        assert engine.appends[1] == 4
        assert q.peek(100) == ["first", "t0"]
    assert results["first"] is None and results["t0"] is None
    assert all(isinstance(results[f"t{i}"], spoolq.EngineError) for i in (1, 2, 3))
# ---- fork ---------------------------------------------------------------------------

FORKED = textwrap.dedent("""
    import os, sys, time, spoolq
    q = spoolq.SyncQueue.create(sys.argv[1], durability="buffer", flush_interval=0.2)
    for i in range(5):
        q.put(f"parent-{i}")
    for child in ("closes", "is killed"):
        pid = os.fork()
        if pid == 0:
            try:
                q.put(child)
                if child == "closes":
                    q.close()
                else:
                    time.sleep(2)  # its flusher writes the put within flush_interval
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    q.close()
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_writes_its_own_puts_and_not_its_parents_buffer(
        tmp_path: Path) -> None:
    # A child inherits its parent's buffer of unwritten puts, which the parent writes.
    # Closing the handle in the child wrote them a second time; and the child had no
    # flusher thread, so its own buffered puts waited for flush_items or close.
    path = str(tmp_path / "q.sqlite")
    subprocess.run([sys.executable, "-c", FORKED, path], check=True, timeout=60)
    with SyncQueue.create(path) as q:
        got = q.get_many(None, block=False)
    assert collections.Counter(got) == collections.Counter(
        ["closes", "is killed"] + [f"parent-{i}" for i in range(5)])


# ---- exit -----------------------------------------------------------------------------

EXITS = {
    "sync": """
        import sys, spoolq
        q = spoolq.SyncQueue.create(sys.argv[1], durability="buffer", flush_interval=60)
        for i in range(10):
            q.put(i)
    """,
    "async": """
        import asyncio, sys, spoolq
        async def main():
            q = await spoolq.Queue.create(sys.argv[1], durability="buffer", flush_interval=60)
            for i in range(10):
                await q.put(i)
        asyncio.run(main())
    """,
}


@pytest.mark.parametrize("kind", sorted(EXITS))
def test_a_buffer_left_open_is_written_when_the_interpreter_exits(
        tmp_path: Path, kind: str) -> None:
    # A program that ends without closing its queue lost the buffered puts: only a
    # killed process may lose them.
    path = str(tmp_path / "q.sqlite")
    subprocess.run([sys.executable, "-W", "ignore", "-c", textwrap.dedent(EXITS[kind]), path],
                   check=True, timeout=60)
    with SyncQueue.create(path) as q:
        assert q.get_many(None, block=False) == list(range(10))


# ---- kill -----------------------------------------------------------------------------

PRODUCERS = """
    import asyncio, os, sys, threading, spoolq
    path, kind, durability = sys.argv[1:4]
    out = os.fdopen(sys.stdout.fileno(), "w", buffering=1)
    lock = threading.Lock()

    def returned(item):
        with lock:
            out.write(item + "\\n")

    if kind == "threads":
        q = spoolq.SyncQueue.create(path, durability=durability, flush_items=7)
        def produce(t):
            for n in range(10**9):
                if n % 3:
                    q.put(f"{t}-{n}")
                else:
                    q.put_many([f"{t}-{n}", f"{t}-{n}b"])
                returned(f"{t}-{n}")
        for t in range(8):
            threading.Thread(target=produce, args=(t,), daemon=True).start()
        threading.Event().wait()
    else:
        async def main():
            q = await spoolq.Queue.create(path, durability=durability, flush_items=7)
            async def produce(t):
                for n in range(10**9):
                    if n % 3:
                        await q.put(f"{t}-{n}")
                    else:
                        await q.put_many([f"{t}-{n}", f"{t}-{n}b"])
                    returned(f"{t}-{n}")
            await asyncio.gather(*(produce(t) for t in range(16)))
        asyncio.run(main())
"""


@pytest.mark.parametrize("kind", ["threads", "tasks"])
@pytest.mark.parametrize("durability", ["commit", "buffer"])
def test_group_committed_puts_survive_sigkill_once_each(
        tmp_path: Path, kind: str, durability: str) -> None:
    # Every put that returned with "commit" is stored, once; with "buffer", what is
    # stored is a prefix of each producer's puts (the buffer lost, nothing more), and a
    # put_many is stored whole or not at all.
    path = str(tmp_path / "q.sqlite")
    with subprocess.Popen([sys.executable, "-c", textwrap.dedent(PRODUCERS), path, kind,
                           durability], stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        returned = [child.stdout.readline().strip() for _ in range(2000)]
        child.kill()
        returned += child.stdout.read().split()
        child.wait(10)
    with SyncQueue.create(path) as q:
        stored = q.get_many(None, block=False)
    counts = collections.Counter(stored)
    assert max(counts.values()) == 1
    for item in stored:
        producer, n = item.rstrip("b").split("-")
        if int(n) % 3 == 0:  # put_many: both or neither
            assert f"{producer}-{n}" in counts and f"{producer}-{n}b" in counts
    if durability == "commit":
        assert not set(returned) - set(counts)
    else:
        by_producer = collections.defaultdict(list)
        for item in stored:
            if not item.endswith("b"):
                producer, n = item.split("-")
                by_producer[producer].append(int(n))
        for ns in by_producer.values():
            assert sorted(ns) == list(range(len(ns)))


# ---- a put alone ----------------------------------------------------------------------


def test_records_a_put_alone_stored_before_failing_are_counted(tmp_path: Path) -> None:
    # A put_many with the queue to itself is written at once; when the engine stored its
    # first request's records and then failed, those are in the queue: qsize() and
    # task_done() must know of them. qsize() said 0, and task_done() after getting one
    # raised ValueError.
    path = str(tmp_path / "q.sqlite")
    engine = RequestsEngine(open_engine(path))
    with SyncQueue.create(path, engine=engine) as q:  # type: ignore[arg-type]
        engine.script = [2]
        with pytest.raises(spoolq.EngineError):
            q.put_many(["a", "b", "c"])
        assert q.qsize() == 2 and q.stats["unfinished"] == 2 and q.stats["puts"] == 2
        assert q.get_many(None, block=False) == ["a", "b"]
        q.task_done()
        q.task_done()
        q.join()
