"""A group commit interrupted (KeyboardInterrupt, SystemExit from a signal handler) while
it writes its callers' records apart: every caller whose item is not stored hears of it,
none returns as if its put were stored, and none waits for ever."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import SyncQueue
from spoolq.engines import Engine, open_engine


class ScriptedEngine:
    """Delegates to a real engine. The append after ``hold()`` waits for ``release()``;
    then each append raises the next exception of ``script`` (None: it writes)."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.script: list[BaseException | None] = []
        self.held, self.go = threading.Event(), threading.Event()
        self._hold = False

    def hold(self) -> None:
        self._hold = True

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        if self._hold:
            self._hold = False
            self.held.set()
            assert self.go.wait(10), "never released"
        failure = self.script.pop(0) if self.script else None
        if failure is not None:
            raise failure
        return self._inner.append(queue, records, raw_sizes, now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.parametrize("durability", ["commit", "fsync"])
def test_an_interrupted_group_commit_fails_the_puts_it_did_not_store(
        tmp_path: Path, durability: str) -> None:
    path = str(tmp_path / "q.sqlite")
    engine = ScriptedEngine(open_engine(path, durability=durability))
    results: dict[str, BaseException | None] = {}

    def put(item: str) -> None:
        try:
            q.put(item)
            results[item] = None
        except BaseException as exc:
            results[item] = exc

    with SyncQueue.create(path, engine=engine, durability=durability) as q:
        engine.hold()
        first = threading.Thread(target=put, args=("first",))
        first.start()
        assert engine.held.wait(5)
        others = [threading.Thread(target=put, args=(f"t{i}",)) for i in range(4)]
        for t in others:
            t.start()
        while q.qsize() < 4:  # the four wait for the next group commit
            threading.Event().wait(0.005)
        # The group fails, is written apart, and the first half is interrupted.
        engine.script = [None, spoolq.EngineError("disk full"), KeyboardInterrupt()]
        engine.go.set()
        for t in [first, *others]:
            t.join(10)
            assert not t.is_alive(), "a put waits for ever"
        stored = q.peek(10)
    assert results["first"] is None and stored[0] == "first"
    interrupted = [k for k, v in results.items() if isinstance(v, KeyboardInterrupt)]
    assert interrupted, results
    for item in (f"t{i}" for i in range(4)):
        # A put that returned has its item stored; one that did not raised.
        assert (results[item] is None) == (item in stored), (results, stored)
