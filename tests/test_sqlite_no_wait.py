"""The SQLite engine's ``no_wait()``: within it a call that would wait for another
process's lock raises LockTimeout at once and changes nothing; outside it, calls wait for
the lock as ever, in a forked child too."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from spoolq.engines.sqlite import SQLiteEngine
from spoolq.errors import LockTimeout

from .sqlite_locks import hold_lock


def test_within_no_wait_a_call_raises_at_once_and_changes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    engine = SQLiteEngine(path)
    engine.append("q", [b"a"], [1], 1.0)
    with hold_lock(path, 1.0) as holder:
        start = time.monotonic()
        with pytest.raises(LockTimeout), engine.no_wait():
            engine.append("q", [b"b"], [1], 1.0)
        with pytest.raises(LockTimeout), engine.no_wait():
            engine.take("q", 1, 2.0, None)
        assert time.monotonic() - start < 0.5
        holder.wait(10)
    assert engine.counts("q").ready == 1
    assert [r.data for r in engine.take("q", 5, 2.0, None)] == [b"a"]
    engine.close()


def test_after_no_wait_a_write_waits_for_the_lock_again(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    engine = SQLiteEngine(path)
    with engine.no_wait():
        engine.append("q", [b"a"], [1], 1.0)
    with hold_lock(path, 0.5) as holder:
        engine.append("q", [b"b"], [1], 1.0)  # waits for the holder, then writes
        holder.wait(10)
    assert engine.counts("q").ready == 2
    engine.close()


def test_a_forked_child_waits_for_the_lock_after_no_wait(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    engine = SQLiteEngine(path)
    engine.append("q", [b"a"], [1], 1.0)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its engine connects anew on its first call
        code = 1
        try:
            with engine.no_wait():
                engine.counts("q")
            os.write(ready_w, b"x")
            os.read(go_r, 1)
            engine.append("q", [b"b"], [1], 1.0)  # must wait for the parent's holder
            code = 0
        finally:
            os._exit(code)
    os.read(ready_r, 1)
    with hold_lock(path, 0.5) as holder:
        os.write(go_w, b"x")
        _, status = os.waitpid(pid, 0)
        holder.wait(10)
    assert os.waitstatus_to_exitcode(status) == 0
    assert engine.counts("q").ready == 2
    engine.close()
