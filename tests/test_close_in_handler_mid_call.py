"""A signal handler that calls ``close()`` of a ``SyncQueue`` may run while its thread
is inside a call of the queue: inside the engine's transaction (a put between its
statements), or in the core's bookkeeping under its tally lock (an ack). The handler
must neither close the engine under that transaction (the call then failed with
"Cannot operate on a closed database", and close() itself with "cannot start a
transaction within a transaction") nor wait for ever for a lock its own thread holds:
the file closes once the interrupted call has ended, and that call's outcome holds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import spoolq

_SCRIPT = textwrap.dedent("""
    import linecache, signal, sys
    import spoolq

    path, where = sys.argv[1], sys.argv[2]
    q = spoolq.SyncQueue.create(path)
    q.put("first")
    msg = q.lease(timeout=1)

    def handler(*_):
        q.close()
        print("handler returned", flush=True)

    signal.signal(signal.SIGALRM, handler)

    def trace(frame, event, arg):
        code = frame.f_code
        if where == "engine" and event == "call" and code.co_name == "_append" \\
                and code.co_filename.endswith("sqlite.py"):
            sys.settrace(None)
            signal.raise_signal(signal.SIGALRM)  # inside BEGIN IMMEDIATE ... COMMIT
            return None
        if where == "tally" and code.co_name == "ack" and code.co_filename.endswith(
                "settle.py"):
            def lines(frame, event, arg):
                text = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
                if event == "line" and "self._unfinished = max(" in text:
                    sys.settrace(None)
                    frame.f_trace = None
                    signal.raise_signal(signal.SIGALRM)  # under the core's _tally
                return lines
            return lines
        return None

    sys.settrace(trace)
    try:
        if where == "engine":
            q.put("second")
        else:
            q.ack(msg)
        print("call returned", flush=True)
    except (spoolq.QueueShutDown, spoolq.ClosedError) as exc:
        print("call refused", type(exc).__name__, flush=True)
    finally:
        sys.settrace(None)
    q.close()
    print("done", flush=True)
""")


@pytest.mark.parametrize("where", ["engine", "tally"])
def test_close_in_a_handler_that_interrupts_a_call(tmp_path: Path, where: str) -> None:
    path = str(tmp_path / "q.sqlite")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    try:
        run = subprocess.run([sys.executable, "-c", _SCRIPT, path, where], check=False,
                             capture_output=True, text=True, timeout=20, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("close() in the signal handler hung")
    assert run.returncode == 0, run.stderr
    out = run.stdout.split("\n")
    assert out[0] == "handler returned", run.stdout + run.stderr
    assert out[1] == "call returned", run.stdout + run.stderr  # it was under way: it ends
    assert out[2] == "done"
    assert "Error" not in run.stderr, run.stderr
    with spoolq.SyncQueue[str].create(path) as q:
        if where == "engine":
            assert q.stats["leased"] == 0  # given back by the close
            assert q.peek(5) == ["first", "second"]
        else:
            assert q.peek(5) == [] and q.stats["leased"] == 0  # the ack held
