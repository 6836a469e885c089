"""A signal handler that calls ``shutdown()`` or ``close()`` of a ``SyncQueue`` may run
while the interrupted thread is inside the queue's own bookkeeping, holding its lock (a
``task_done`` waking the threads in ``join()``, say): the handler's call must not wait
for a lock its own thread holds, for ever."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import queue_path

_SCRIPT = textwrap.dedent("""
    import signal, sys
    import spoolq

    path, what = sys.argv[1], sys.argv[2]
    q = spoolq.SyncQueue.create(path)
    q.put("a")
    q.get()

    def handler(*_):
        getattr(q, what)()
        print("handler returned", flush=True)

    signal.signal(signal.SIGALRM, handler)

    def trace(frame, event, arg):
        # The signal comes as task_done wakes the threads in join(), under the lock.
        if event == "call" and frame.f_code.co_name == "notify_all" \\
                and frame.f_back.f_code.co_name == "_wake_joins":
            sys.settrace(None)
            signal.raise_signal(signal.SIGALRM)
        return None

    sys.settrace(trace)
    q.task_done()
    sys.settrace(None)
    q.close()
    print("done", flush=True)
""")


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
@pytest.mark.parametrize("what", ["shutdown", "close"])
def test_shutdown_or_close_in_a_handler_while_the_thread_holds_the_lock(
        tmp_path: Path, engine: str, what: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    try:
        run = subprocess.run([sys.executable, "-c", _SCRIPT, queue_path(tmp_path, engine),
                              what], check=False, capture_output=True, text=True,
                             timeout=10, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what}() in the signal handler hung on the queue's lock")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["handler returned", "done"]
