"""A child forked from a process with open queues, using its parent's handles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import spoolq

from .conftest import queue_path

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _in_child(q: spoolq.SyncQueue[str]) -> str:
    """Fork; in the child put and get through ``q`` and report what happened."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        try:
            q.put("child")
            report = f"got {q.get(timeout=5)}"
        except Exception as exc:
            report = f"{type(exc).__name__}: {exc}"
        os.write(write_end, report.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        report = f.read().decode()
    os.waitpid(pid, 0)
    return report


def test_a_child_uses_its_parents_sqlite_handle_through_a_connection_of_its_own(
        tmp_path: Path) -> None:
    path = queue_path(tmp_path, "sqlite")
    with spoolq.SyncQueue.create(path) as q:
        q.put("parent")
        assert _in_child(q) == "got parent"
        assert q.get_many(timeout=1) == ["child"]  # each item once, none lost
        q.put("after")
    with spoolq.SyncQueue.create(path) as again:
        assert again.get_many(timeout=1) == ["after"]


@pytest.mark.parametrize("engine", ["lmdb", "dbm", "pickle"])
def test_a_child_cannot_use_its_parents_store_and_leaves_it_alone(tmp_path: Path,
                                                                  engine: str) -> None:
    """The child used the parent's LMDB environment, or its in-memory dbm or pickle state:
    the parent then handed out an item the child had taken, and lost the child's put."""
    path = queue_path(tmp_path, engine)
    with spoolq.SyncQueue.create(path) as q:
        q.put("parent")
        report = _in_child(q)
        assert report.startswith("LockTimeout" if engine != "lmdb" else "EngineError"), report
        assert "fork" in report or "another process" in report
        assert q.get_many(timeout=1) == ["parent"]
        q.put("after")
    with spoolq.SyncQueue.create(path) as again:
        assert again.get_many(timeout=1) == ["after"]


def test_a_child_forked_while_a_thread_is_inside_a_call_does_not_hang(
        tmp_path: Path) -> None:
    """A thread of the parent is inside a call of the handle (it holds the handle's lock)
    when another thread forks: that thread does not exist in the child, so its lock must
    not stay held there. Run in a child process, so that a hang is a timeout."""
    script = textwrap.dedent(f"""
        import os, signal, threading, spoolq
        q = spoolq.SyncQueue.create({queue_path(tmp_path, "sqlite")!r})
        q.put("before")
        inside, leave = threading.Event(), threading.Event()

        def busy() -> None:
            with q._core.lock:  # as any call does while it runs
                inside.set()
                leave.wait()

        t = threading.Thread(target=busy)
        t.start()
        inside.wait()
        pid = os.fork()
        if pid == 0:
            signal.alarm(15)  # a child that hangs ends all the same
            q.put("child")
            print("child got", q.get_many(5, timeout=0), flush=True)
            q.close()
            os._exit(0)
        leave.set()
        t.join()
        _, status = os.waitpid(pid, 0)
        print("parent sees", q.peek(5), os.waitstatus_to_exitcode(status))
        q.close()
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=20, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["child got ['before', 'child']", "parent sees [] 0"]


def test_a_child_forked_while_a_thread_used_a_custom_codec_can_use_it(
        tmp_path: Path) -> None:
    """A custom serializer is called by one thread at a time, under a lock: a child forked
    while another thread of its parent held that lock hung at its first put."""
    entered, leave = threading.Event(), threading.Event()

    class Slow:
        def dumps(self, item: object) -> bytes:
            if item == "slow":
                entered.set()
                leave.wait(10)
            return json.dumps(item).encode()

        def loads(self, data: bytes) -> object:
            return json.loads(data)

    with spoolq.SyncQueue.create(queue_path(tmp_path, "sqlite"), serializer=Slow()) as q:
        busy = threading.Thread(target=q.put, args=("slow",))
        busy.start()
        try:
            assert entered.wait(10)
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                os.close(read_end)
                signal.alarm(10)  # a hang ends the child, and the test fails
                q.put("child")
                os.write(write_end, b"put")
                os._exit(0)
            os.close(write_end)
            with os.fdopen(read_end, "rb") as f:
                report = f.read()
            os.waitpid(pid, 0)
        finally:
            leave.set()
            busy.join()
    assert report == b"put"
