"""Settings at the edges of their ranges, the stats a queue reports against what
happened, and the memory engine held to the engine protocol."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from spoolq import ConfigurationError, SyncQueue
from spoolq.engines.base import MAX_ATTEMPTS


def _files(tmp_path: Path) -> list[str]:
    return sorted(os.listdir(tmp_path))


# ---- settings -----------------------------------------------------------------------------


def test_max_attempts_beyond_what_engines_store_is_refused(tmp_path: Path) -> None:
    # SQLite took 2**100 at open, then failed every nack with an OverflowError.
    path = os.fspath(tmp_path / "q.sqlite")
    with pytest.raises(ConfigurationError, match="max_attempts"):
        SyncQueue.create(path, max_attempts=2**100)
    assert _files(tmp_path) == []
    with SyncQueue.create(path, max_attempts=MAX_ATTEMPTS) as q:
        q.put(1)
        q.nack(q.lease(ttl=30))
        assert q.get_nowait() == 1


@pytest.mark.parametrize("setting", ["poll_interval", "flush_interval"])
def test_intervals_longer_than_a_thread_can_wait_are_refused(tmp_path: Path,
                                                             setting: str) -> None:
    # Accepted, they failed later: join() raised OverflowError (poll_interval), and the
    # flusher thread of durability "buffer" died with one (flush_interval).
    path = os.fspath(tmp_path / "q.sqlite")
    with pytest.raises(ConfigurationError, match=setting):
        SyncQueue.create(path, durability="buffer", **{setting: 1e300})
    assert _files(tmp_path) == []
    limit = threading.TIMEOUT_MAX
    with SyncQueue.create(path, durability="buffer", **{setting: limit}) as q:
        q.put(1)
        q.task_done()
        q.join()


@pytest.mark.parametrize("options", [[("timeout", 1)], "timeout", 5])
def test_engine_options_that_are_not_a_dict_are_a_configuration_error(
        tmp_path: Path, options: Any) -> None:
    path = os.fspath(tmp_path / "q.sqlite")
    with pytest.raises(ConfigurationError, match="engine_options"):
        SyncQueue.create(path, engine_options=options)
    assert _files(tmp_path) == []


@pytest.mark.parametrize("suffix", [".sqlite", ".lmdb", ".dbm", ".pickle"])
def test_a_buffer_on_a_read_only_queue_is_refused(tmp_path: Path, suffix: str) -> None:
    # Accepted, a put returned into a buffer that could never be written: the item was
    # lost at close, with the engine's error.
    path = os.fspath(tmp_path / f"q{suffix}")
    with SyncQueue.create(path) as q:
        q.put(1)
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigurationError, match=r"durability.*read_only"):
        SyncQueue.create(path, durability="buffer", engine_options={"read_only": True})
    assert _snapshot(tmp_path) == before
    with SyncQueue.create(path, engine_options={"read_only": True}) as q:
        assert q.peek(5) == [1]


def _snapshot(root: Path) -> dict[str, bytes]:
    """The queue's files, without SQLite's and LMDB's lock and index files, which any
    read-only open touches."""
    return {os.fspath(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(("-lock", "-shm", "-wal"))}
