"""Forks after calls of the SQLite engine that an exception cut short, or whose thread
ended: no call is left marked as under way, so no later fork waits for it for ever."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _run(script: str, timeout: float = 60) -> list[str]:
    """Run ``script`` in a new interpreter; one that hangs is killed (SIGKILL) and fails."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the process hung; it wrote: {out}{err}")
    assert proc.returncode == 0, f"{out}{err}"
    return out.split()


_FORK = """
    def fork_in_time():
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(5)  # a fork that waits for ever ends the process
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        signal.alarm(0)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
"""


def test_calls_cut_short_by_a_signal_handler_that_raises_leave_forks_free(
        tmp_path: Path) -> None:
    """KeyboardInterrupt (or any exception of a signal handler) at any point of a call."""
    out = _run(_FORK + f"""
    import gc, os, signal, time
    from spoolq.engines import _forkguard
    from spoolq.engines.sqlite import SQLiteEngine

    class Interrupt(Exception):
        pass

    armed = False

    def interrupt(signum, frame):
        if armed:
            raise Interrupt

    engine = SQLiteEngine({os.fspath(tmp_path / "q.sqlite")!r})
    signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.00013)
    end, interrupted, left = time.monotonic() + 4, 0, 0
    while time.monotonic() < end and not left:
        try:
            armed = True
            engine.append("q", [b"x"], [1], time.time())
            engine.take("q", 1, time.time(), None)
            engine.counts("q")
            engine.peek("q", 1)
            armed = False
        except Interrupt:
            armed = False
            interrupted += 1
        except Exception:
            armed = False
        gc.collect(0)
        left = len(_forkguard._inside)
    signal.setitimer(signal.ITIMER_REAL, 0)
    print("interrupted", interrupted > 0, "left", left, flush=True)
    print("fork", fork_in_time())
    """)
    assert out == ["interrupted", "True", "left", "0", "fork", "0"]


def test_a_thread_that_ended_marked_inside_a_call_does_not_hold_up_forks() -> None:
    """A thread that ended without leaving its call (an exception set in it by another
    thread, at the wrong moment) is not waited for."""
    out = _run(_FORK + """
    import os, signal, threading
    from spoolq.engines._forkguard import enter

    t = threading.Thread(target=enter)
    t.start()
    t.join()
    print("fork", fork_in_time())
    """)
    assert out == ["fork", "0"]


def test_a_signal_handler_inside_a_call_can_hand_work_to_an_executor_while_a_thread_forks(
        ) -> None:
    """concurrent.futures takes its lock before a fork: not while the fork waits for the
    calls under way, one of which runs a signal handler that submits work."""
    out = _run("""
    import os, signal, threading, time
    import spoolq
    from concurrent.futures import ThreadPoolExecutor
    from spoolq.engines._forkguard import enter, leave

    signal.alarm(10)  # a deadlock ends the process
    executor = ThreadPoolExecutor(1)
    handled = []
    signal.signal(signal.SIGUSR1, lambda *a: handled.append(executor.submit(int, 7).result()))
    inside = enter()  # the main thread between two statements of a transaction

    def fork():
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)

    forker = threading.Thread(target=fork)
    forker.start()
    time.sleep(0.3)  # the fork waits for the main thread's call
    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
    time.sleep(0.3)
    leave(inside)
    forker.join()
    print("handled", *handled)
    """, timeout=30)
    assert out == ["child", "0", "handled", "7"]
