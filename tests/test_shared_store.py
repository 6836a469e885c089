"""The store that every handle on one lmdb, dbm or pickle file in a process shares."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import spoolq
from spoolq.engines import open_engine

from .waiting import in_thread


@pytest.mark.parametrize("suffix", [".pickle", ".dbm", ".lmdb"])
def test_a_call_waiting_while_the_last_handle_closes_gets_closed_error(
        tmp_path: Path, suffix: str) -> None:
    """A call that got the store before close() and waits for it (another thread's call
    holds it) raises ClosedError once it is closed, and writes nothing: a pickle store
    would rewrite its file without holding the file's lock any more."""
    path = str(tmp_path / f"q{suffix}")
    engine = open_engine(path)
    engine.append("q", [b"first"], [5], 1.0)
    lock = engine._entry.lock  # type: ignore[attr-defined]
    with lock:  # as a call running on another thread holds it
        thread, out = in_thread(lambda: engine.append("q", [b"late"], [4], 2.0))
        time.sleep(0.2)  # the append has the store and waits for its lock
        engine.close()  # the last handle: the store closes
    thread.join(10)
    assert len(out) == 1 and isinstance(out[0], spoolq.ClosedError), out
    again = open_engine(path)
    try:
        assert [r.data for r in again.peek("q", 10)] == [b"first"]
    finally:
        again.close()
