"""SyncQueue: a get, get_many or lease whose timeout passes reads the file's counts once
more before it raises Empty, as put does before Full: an item another process put after
the last read (less than a poll interval before) is taken, not missed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spoolq import SyncQueue

from .conftest import SHARED_ENGINES, queue_path
from .test_async_line2 import PUT


@pytest.mark.parametrize("call", ["get", "get_many", "lease"])
@pytest.mark.parametrize("engine", SHARED_ENGINES)
def test_a_call_whose_timeout_passes_looks_at_the_file_once_more(
        tmp_path: Path, engine: str, call: str) -> None:
    path = queue_path(tmp_path, engine)
    with SyncQueue.create(path, poll_interval=60.0) as q:
        assert q.qsize() == 0  # the counts are read now, and not again for a minute
        subprocess.run([sys.executable, "-c", PUT, path, "x"], check=True, timeout=30)
        if call == "get":
            got = [q.get(timeout=0.3)]
        elif call == "get_many":
            got = q.get_many(1, timeout=0.3)
        else:
            msg = q.lease(timeout=0.3, ttl=60)
            q.ack(msg)
            got = [msg.item]
    assert got == ["x"]
