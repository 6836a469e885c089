"""SQLite handles around a fork made by another thread at any point of a call, of a
close, of an open: the fork closes every connection of the engine once no other thread
is inside a call, and each handle connects anew at its next call. A handle closed stays
closed, no connection is left open across the fork (the child would take the file's locks
for granted, see test_sqlite_fork_close.py), and a call that straddles the fork neither
fails nor waits where it would not have. Real files, real forks, another process holding
the file's lock where that matters."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import pytest

from spoolq.engines import _sqlite_forks, sqlite
from spoolq.engines._sqlite_schema import BusyTimeout
from spoolq.engines.sqlite import SQLiteEngine
from spoolq.errors import ClosedError, EngineError, LockTimeout

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="forks, and reads /proc/self/fd")

_AT_POINT = 2.0  # seconds the forking thread waits for the other to reach its point
_FOR_FORK = 0.05  # seconds the paused thread waits for the fork (which may wait for it)


def _codes() -> set[CodeType]:
    """The code of the engine's own modules: a fork may come at any line of them."""
    found = set()
    for module in (sqlite, _sqlite_forks):
        for cls in vars(module).values():
            if isinstance(cls, type) and cls.__module__ == module.__name__:
                for member in vars(cls).values():
                    f = getattr(member, "fget", member)
                    f = getattr(f, "__wrapped__", f)
                    if hasattr(f, "__code__"):
                        found.add(f.__code__)
    return found


def _open_fds(path: str) -> int:
    """How many file descriptors of this process are on the queue file or its WAL."""
    names = {os.path.realpath(path) + end for end in ("", "-wal", "-shm")}
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}") in names
    return n


def _fork_at(k: int, op: Callable[[], Any], path: str) -> tuple[Any, int]:
    """Run ``op()`` in a thread that stops at its ``k``-th line of the engine's code while
    this thread forks; return (what op returned or raised, the child's descriptors on the
    file at its start), or (None, -1) when op has fewer lines than ``k``."""
    codes, at, forked = _codes(), threading.Event(), threading.Event()
    seen = [0]
    outcome: list[Any] = [None]

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        if frame.f_code not in codes:
            return None
        if event == "line":
            seen[0] += 1
            if seen[0] == k:
                at.set()
                forked.wait(_FOR_FORK)
        return trace

    def run() -> None:
        sys.settrace(trace)
        try:
            outcome[0] = op()
        except BaseException as exc:  # the outcome is what the test looks at
            outcome[0] = exc
        finally:
            sys.settrace(None)
            at.set()

    thread = threading.Thread(target=run)
    thread.start()
    at.wait(_AT_POINT)
    if seen[0] < k:
        thread.join(10)
        return outcome[0], -1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(w, str(_open_fds(path)).encode())
        finally:
            os._exit(0)
    forked.set()
    os.close(w)
    fds = int(os.read(r, 16) or b"-2")
    os.close(r)
    os.waitpid(pid, 0)
    thread.join(10)
    assert not thread.is_alive()
    return outcome[0], fds


def _each_point(op_for: Callable[[int], Callable[[], Any]], path: str,
                check: Callable[[int, Any], None]) -> int:
    """Fork at each line of the engine's code that ``op_for(k)()`` runs; ``check(k, got)``."""
    k = 0
    while True:
        k += 1
        got, fds = _fork_at(k, op_for(k), path)
        if fds == -1:
            return k - 1
        assert fds == 0, f"point {k}: the child started with {fds} descriptors on the file"
        check(k, got)
        assert k < 200


def test_a_close_that_a_fork_comes_into_stays_closed(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    engines: dict[int, SQLiteEngine] = {}

    def op_for(k: int) -> Callable[[], Any]:
        engines[k] = engine = SQLiteEngine(path)
        engine.append("q", [b"x"], [1], time.time())
        return engine.close

    def check(k: int, got: Any) -> None:
        assert got is None, f"point {k}: close() gave {got!r}"
        with pytest.raises(ClosedError):
            engines[k].counts("q")

    assert _each_point(op_for, path, check) >= 3


def test_an_engine_opened_while_another_thread_forks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The fork closes an engine opened meanwhile too, and the others: no error."""
    path = str(tmp_path / "q.sqlite")
    SQLiteEngine(path).close()
    other = SQLiteEngine(path)
    made: list[Any] = []

    def op_for(k: int) -> Callable[[], Any]:
        other.counts("q")
        return lambda: made.append(SQLiteEngine(path)) or made[-1]

    def check(k: int, got: Any) -> None:
        assert isinstance(got, SQLiteEngine), f"point {k}: {got!r}"
        got.append("q", [b"x"], [1], time.time())
        assert got.counts("q").ready == len(made)

    with caplog.at_level(logging.ERROR, logger="spoolq"):
        assert _each_point(op_for, path, check) >= 3
    assert not [r for r in caplog.records if "before a fork" in r.getMessage()]


@pytest.mark.parametrize("call", ["set_meta", "check_records", "no_wait", "append"])
def test_a_call_that_a_fork_comes_into_does_not_fail(tmp_path: Path, call: str) -> None:
    path = str(tmp_path / "q.sqlite")
    engine = SQLiteEngine(path)
    big = [b"y" * 100_000]

    def op() -> Any:
        if call == "set_meta":
            return engine.set_meta("k", b"v")
        if call == "check_records":
            return engine.check_records("q", big)
        if call == "append":
            return engine.append("q", [b"x"], [1], time.time())
        with engine.no_wait():
            return engine.append("q", [b"x"], [1], time.time())

    def check(k: int, got: Any) -> None:
        assert not isinstance(got, BaseException), f"point {k}: {got!r}"

    assert _each_point(lambda k: op, path, check) >= 3
    assert engine.get_meta("k") == (b"v" if call == "set_meta" else None)


def _hold_lock(path: str, held: Any, release: Any) -> None:  # pragma: no cover - a child
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    held.set()
    release.wait(30)
    conn.execute("ROLLBACK")
    conn.close()


def test_no_wait_spanning_a_fork_still_does_not_wait(tmp_path: Path) -> None:
    """Calls within one no_wait() that another thread forks between: the one after the
    fork raises LockTimeout at once too, rather than wait out the busy timeout."""
    path = str(tmp_path / "q.sqlite")
    engine = SQLiteEngine(path, timeout=4.0)
    engine.append("q", [b"x"], [1], time.time())
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(path, held, release))
    holder.start()
    try:
        assert held.wait(20)
        with engine.no_wait():
            with pytest.raises(LockTimeout):
                engine.append("q", [b"x"], [1], time.time())
            forker = threading.Thread(target=lambda: os.waitpid(_fork_and_exit(), 0))
            forker.start()
            forker.join(10)
            start = time.monotonic()
            with pytest.raises(LockTimeout):
                engine.append("q", [b"x"], [1], time.time())
            waited = time.monotonic() - start
        assert waited < 1.0, f"the call after the fork waited {waited:.2f} s"
        assert isinstance(engine._busy, BusyTimeout)
    finally:
        release.set()
        holder.join(20)
    engine.append("q", [b"x"], [1], time.time())  # waits for locks again
    assert engine.counts("q").ready == 2


def _fork_and_exit() -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    return pid


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_file_gone_before_the_reconnect_is_not_made_anew(tmp_path: Path, how: str) -> None:
    """The handle's file removed (or another put in its place) while the handle was set
    aside for a fork: its next call fails, and makes no empty queue at the path."""
    path = str(tmp_path / "q.sqlite")
    engine = SQLiteEngine(path)
    engine.append("q", [b"x"], [1], time.time())
    os.waitpid(_fork_and_exit(), 0)  # closes the connection
    for end in ("", "-wal", "-shm"):
        if os.path.exists(path + end):
            os.rename(path + end, str(tmp_path / "aside.sqlite") + end)
    if how == "replaced":
        SQLiteEngine(path).close()
    with pytest.raises(EngineError, match="removed or replaced"):
        engine.append("q", [b"x"], [1], time.time())
    with pytest.raises(EngineError, match="removed or replaced"):
        engine.counts("q")  # again, not ClosedError: the handle was not closed
    assert os.path.exists(path) == (how == "replaced")
    for end in ("", "-wal", "-shm"):
        if os.path.exists(path + end):
            os.remove(path + end)
        if os.path.exists(str(tmp_path / "aside.sqlite") + end):
            os.rename(str(tmp_path / "aside.sqlite") + end, path + end)
    assert engine.counts("q").ready == 1  # its file back: the handle goes on
    engine.close()
    with pytest.raises(ClosedError):
        engine.counts("q")


def test_a_reconnect_that_fails_once_leaves_the_handle_open(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    engine = SQLiteEngine(path)
    engine.append("q", [b"x"], [1], time.time())
    os.waitpid(_fork_and_exit(), 0)
    os.chmod(tmp_path, 0o500)  # not for root: then the file is held open by another below
    try:
        hidden = str(tmp_path / "hidden")
        if os.access(tmp_path, os.W_OK):  # root: make the open fail another way
            os.chmod(tmp_path, 0o700)
            os.rename(path, hidden)
            os.mkdir(path)
        with pytest.raises(EngineError) as failed:
            engine.counts("q")
        assert not isinstance(failed.value, ClosedError)
        if os.path.isdir(path):
            os.rmdir(path)
            os.rename(hidden, path)
    finally:
        os.chmod(tmp_path, 0o700)
    assert engine.counts("q").ready == 1


def test_each_fork_closes_without_growing(tmp_path: Path) -> None:
    """Many forks: no connection kept per fork, in the parent."""
    from spoolq.engines import _sqlite_schema
    engines = [SQLiteEngine(str(tmp_path / f"q{i}.sqlite")) for i in range(5)]
    before = len(_sqlite_schema.INHERITED)
    for _ in range(30):
        os.waitpid(_fork_and_exit(), 0)
        for e in engines:
            e.counts("q")
    assert len(_sqlite_schema.INHERITED) == before
    assert _open_fds(str(tmp_path / "q0.sqlite")) <= 3
