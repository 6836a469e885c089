"""A child forked while other threads of its parent are inside SQLite calls.

Python's sqlite3 lets other threads run while SQLite works (it releases the GIL in
``sqlite3_step`` and the like), so a fork can copy the process while one of those threads
holds a mutex of SQLite's own (its memory allocator's, its file system layer's). No thread
of the child ever releases it: the child's first SQLite call that needs it waited for ever.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import spoolq

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

_DEADLINE = 5.0  # seconds a child has to put and get; a sound one needs milliseconds


def _child(path: str, inherited: spoolq.SyncQueue[str] | None, log: str) -> None:
    """The child's part: a put and a get, on the inherited handle or a new one."""
    with open(log, "w") as trace:  # pragma: no cover - runs in the child
        faulthandler.dump_traceback_later(_DEADLINE * 0.6, file=trace)
        if inherited is not None:
            inherited.put("child")
            inherited.get(timeout=_DEADLINE)
        else:
            with spoolq.SyncQueue.create(path) as q:
                q.put("child")
                q.get(timeout=_DEADLINE)
        faulthandler.cancel_dump_traceback_later()
    os._exit(0)


def _wait(pid: int) -> bool:
    """Whether the child ended in time; a child still running at the deadline is killed."""
    deadline = time.monotonic() + _DEADLINE
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return True
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


def _hammer(q: spoolq.SyncQueue[str], stop: threading.Event) -> None:
    while not stop.is_set():
        q.put("x")
        q.get(timeout=1)


FORKS = 100


@pytest.mark.parametrize("child_uses", ["inherited handle", "new handle, same file",
                                        "new handle, other file"])
def test_children_forked_while_threads_are_inside_sqlite_never_hang(
        tmp_path: Path, child_uses: str) -> None:
    files = [os.fspath(tmp_path / f"busy{k}.sqlite") for k in range(2)]
    other = os.fspath(tmp_path / "other.sqlite")
    spoolq.SyncQueue.create(other).close()  # created before: the children only open it
    handles = [spoolq.SyncQueue[str].create(f) for f in files]
    stop = threading.Event()
    threads = [threading.Thread(target=_hammer, args=(handles[k % 2], stop), daemon=True)
               for k in range(4)]
    for t in threads:
        t.start()
    hung: list[str] = []
    n = 0
    try:
        # Without the fork guard up to one fork in two hung: a hundred forks show it.
        for n in range(1, FORKS + 1):
            log = os.fspath(tmp_path / f"child{n}.txt")
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                try:
                    if child_uses == "inherited handle":
                        _child(files[0], handles[0], log)
                    _child(other if child_uses.endswith("other file") else files[0], None, log)
                finally:
                    os._exit(1)
            if not _wait(pid):
                hung.append(Path(log).read_text())
                break  # one is enough: each costs the whole deadline
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for h in handles:
            h.close()
    assert not hung, f"child {n} of {FORKS} hung:\n{hung[0]}"


def _run(script: str) -> list[str]:
    """Run ``script`` in a new interpreter, bounded in time (a deadlock is a failure)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_fork_waits_for_calls_in_sqlite_and_holds_off_new_ones_but_calls_run_together(
        tmp_path: Path) -> None:
    out = _run(f"""
        import os, threading, time, spoolq
        from spoolq.engines._forkguard import enter, leave
        first, second, ended = threading.Event(), threading.Event(), []

        def long_call():  # a call of another thread, which ends in half a second
            inside = enter()
            first.set()
            second.wait(5)
            time.sleep(0.5)
            ended.append(time.monotonic())
            leave(inside)

        def second_call():  # a call of a third thread is not held up by the first
            leave(enter())
            second.set()

        threading.Thread(target=long_call).start()
        first.wait(5)
        threading.Thread(target=second_call).start()
        print("together", second.wait(5))
        late, forking = [], threading.Event()
        os.register_at_fork(before=forking.set)  # runs before the guard's: registered later

        def call_during_fork():
            forking.wait(5)
            time.sleep(0.1)
            late.append(enter())  # while the fork waits: held off until it is made
            late.append(time.monotonic())
            leave(late[0])

        t = threading.Thread(target=call_during_fork)
        t.start()
        pid = os.fork()
        if pid == 0:
            with spoolq.SyncQueue.create({os.fspath(tmp_path / "q.sqlite")!r}) as q:
                q.put("child")
                os._exit(0 if q.get(timeout=5) == "child" else 1)
        forked = time.monotonic()
        t.join()
        print("waited", forked >= ended[0], "held_off", late[1] >= ended[0])
        print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """)
    assert out == ["together", "True", "waited", "True", "held_off", "True", "child", "0"]


def test_a_thread_inside_a_call_can_fork_and_both_processes_go_on(tmp_path: Path) -> None:
    """A fork made by a thread inside a call of its own (a signal handler that forks, say)
    waits for nothing: that call cannot end before the fork."""
    out = _run(f"""
        import os, signal, spoolq
        from spoolq.engines._forkguard import enter, leave
        path = {os.fspath(tmp_path / "q.sqlite")!r}
        with spoolq.SyncQueue.create(path) as q:
            inside = enter()
            signal.alarm(10)  # a deadlock ends the process
            pid = os.fork()
            if pid == 0:
                leave(inside)
                with spoolq.SyncQueue.create(path) as mine:
                    mine.put("child")
                q.put("inherited")
                os._exit(0)
            leave(inside)
            print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
            print(*q.get_many(5, timeout=1))
            pid = os.fork()  # the parent forks again, no call inside
            if pid == 0:
                os._exit(0)
            print("again", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """)
    assert out == ["child", "0", "child", "inherited", "again", "0"]
