"""A version 1 pickle queue file whose rewrite as version 2 fails (the disk is full) or
is killed part way: the file left is the old one, whole and still readable, or the new
one with the change; never a broken one, and a failed rewrite leaves the handle reading
what the file holds."""

from __future__ import annotations

import os
import pickle
import resource
import signal
import time
from pathlib import Path

import pytest

import spoolq
from spoolq.engines import PickleEngine

_RECORDS = 20_000


def _version_1_file(path: Path, records: int) -> None:
    """A file as the engine wrote it at version 1: the queue dict pickled as it is."""
    doc = {"meta": {"application": b"spoolq", "format_version": b"1", "note": b"old"},
           "next_id": records + 1,
           "queues": {"q": [(i, b"r%06d" % i + bytes(100), 107, 0, 10.0 + i, None, None, 0.0)
                            for i in range(1, records + 1)]}}
    path.write_bytes(pickle.dumps(doc, protocol=5))


def _in_child(work: object) -> int:
    """Run ``work()`` in a forked child; its exit status (0 when it returned)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()  # type: ignore[operator]
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _state(path: Path) -> tuple[bytes | None, int, bytes]:
    eng = PickleEngine(path, read_only=True)
    try:
        ready = eng.counts("q").ready
        (last,) = eng.peek("q", 1, ready - 1)
        return eng.get_meta("format_version"), ready, last.data
    finally:
        eng.close()


def test_an_upgrade_on_a_full_disk_leaves_the_version_1_file(tmp_path: Path) -> None:
    path = tmp_path / "q.pickle"
    _version_1_file(path, 2_000)
    before = path.read_bytes()

    def work() -> None:
        eng = PickleEngine(path)
        try:
            limit = len(before) // 2  # a new file cannot be written whole
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
            with pytest.raises(spoolq.EngineError):
                eng.append("q", [b"new"], [3], 99.0)
            # The handle reads the file again: version 1, as it was.
            assert eng.get_meta("format_version") == b"1"
            assert eng.counts("q").ready == 2_000
            with pytest.raises(spoolq.EngineError):
                eng.append("q", [b"new"], [3], 99.0)
            assert path.read_bytes() == before
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
            assert eng.append("q", [b"new"], [3], 99.0) == [2_001]
            assert eng.get_meta("format_version") == b"2"
        finally:
            eng.close()

    assert _in_child(work) == 0
    assert _state(path) == (b"2", 2_001, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.pickle", "q.pickle.lock"]


def test_an_upgrade_killed_mid_save_leaves_the_old_or_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "q.pickle"
    _version_1_file(path, _RECORDS)
    original = path.read_bytes()
    # Outcomes vary with where the kill lands; the file is one of the two every time.
    outcomes = set()
    for delay in (0.0, 0.002, 0.01, 0.03, 0.06, 0.1):
        path.write_bytes(original)
        outcomes.add(_killed_upgrade(path, delay))
    assert outcomes <= {(b"1", _RECORDS, b"r%06d" % _RECORDS + bytes(100)),
                        (b"2", _RECORDS + 1, b"new")}, outcomes


def _killed_upgrade(path: Path, delay: float) -> tuple[bytes | None, int, bytes]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            eng = PickleEngine(path)
            os.write(write, b"open\n")
            eng.append("q", [b"new"], [3], 99.0)
            time.sleep(60)
        finally:
            os._exit(1)
    os.close(write)
    with os.fdopen(read, "rb") as reports:
        assert reports.readline() == b"open\n"
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    state = _state(path)
    for leftover in path.parent.glob("q.pickle.*.tmp"):
        leftover.unlink()  # an interrupted save's; the next writer removes them too
    return state
