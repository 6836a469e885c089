"""``spoolq requeue --leased`` on an LMDB file holding many leases: the memory it takes
does not grow with their number, and a requeue killed part way leaves counts that match
the records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from spoolq.engines import Lease, open_engine

from .cli_support import GONE_OWNER, ROOT

pytest.importorskip("lmdb")

RECORD = 1000


def _leased_file(path: str, n: int, owner: str = GONE_OWNER) -> None:
    eng = open_engine(path)
    try:
        data = os.urandom(RECORD)
        for start in range(0, n, 10_000):
            k = min(10_000, n - start)
            eng.append("default", [data] * k, [RECORD] * k, time.time())
            eng.take("default", k, time.time(), Lease(owner, time.time() + 3600))
    finally:
        eng.close()


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return subprocess.Popen([sys.executable, "-m", "spoolq", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _anon_kb(pid: int) -> int:
    """Resident memory of ``pid`` that is not a file's pages (LMDB maps the file)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _peak_anon_kb(*args: str) -> tuple[int, int]:
    proc = _spawn(*args)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _anon_kb(proc.pid))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        proc.communicate(timeout=120)
    finally:
        done.set()
        sampler.join()
    return peak, proc.returncode


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_requeue_leased_memory_does_not_grow_with_the_leases(tmp_path: Path) -> None:
    small, large = str(tmp_path / "small.lmdb"), str(tmp_path / "large.lmdb")
    _leased_file(small, 2_000)
    _leased_file(large, 100_000)
    small_peak, rc = _peak_anon_kb("requeue", small, "--leased")
    assert rc == 0
    large_peak, rc = _peak_anon_kb("requeue", large, "--leased")
    assert rc == 0
    # In one transaction LMDB holds a copy of every page it rewrites: about 1.3 KB per
    # lease of 1 KB here, 130 MB more for 100,000 leases.
    assert large_peak - small_peak < 40_000, (small_peak, large_peak)
    eng = open_engine(large, read_only=True)
    try:
        counts = eng.counts("default")
        assert (counts.ready, counts.leased) == (100_000, 0)
        assert eng.owners("default") == {}
    finally:
        eng.close()


def test_requeue_leased_killed_between_chunks_leaves_counts_that_match(tmp_path: Path) -> None:
    path = str(tmp_path / "q.lmdb")
    n = 60_000
    _leased_file(path, n)
    proc = _spawn("requeue", path, "--leased", "--chunk", "500")
    deadline = time.monotonic() + 60
    eng = open_engine(path, read_only=True)
    try:
        # Kill it once some, not all, of the leases were given back.
        while time.monotonic() < deadline:
            c = eng.counts("default")
            if c.ready > 0 or proc.poll() is not None:
                break
            time.sleep(0.001)
    finally:
        eng.close()
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    eng = open_engine(path)
    try:
        c = eng.counts("default")
        assert c.ready + c.leased == n
        assert 0 < c.ready < n, c  # it stopped between chunks
        assert len(eng.peek("default", n)) == c.ready
        assert sum(eng.owners("default").values()) == c.leased
        assert len(eng.peek_leased("default", n)) == c.leased  # type: ignore[attr-defined]
        # The rest is given back by running it again.
        assert eng.expire("default", time.time(), owners=[GONE_OWNER]) == c.leased
        assert eng.counts("default")[:2] == (n, 0)
    finally:
        eng.close()


def test_leases_ended_in_chunks_leave_the_others_to_end_on_time(tmp_path: Path) -> None:
    path = str(tmp_path / "q.lmdb")
    eng = open_engine(path)
    try:
        t = time.time()
        eng.append("default", [b"x"] * 20, [1] * 20, t)
        for i in range(10):  # alternate: an owner that died, a live one with a short lease
            eng.take("default", 1, t, Lease(GONE_OWNER, t + 3600))
            eng.take("default", 1, t, Lease("live", t + 5 + i))
        after, ended = 0, []
        while True:
            done, after = eng.expire_some(  # type: ignore[attr-defined]
                "default", t, owners=[GONE_OWNER], limit=3, after=after)
            ended.append(done)
            if not after:
                break
        assert sum(ended) == 10 and max(ended) == 3
        assert eng.owners("default") == {"live": 10}
        assert eng.counts("default")[:2] == (10, 10)
        assert eng.expire("default", t + 4.5) == 0
        assert eng.expire("default", t + 7) == 3  # the leases that end by then, no more
        assert eng.expire("default", t + 100) == 7
        assert eng.counts("default")[:2] == (20, 0)
    finally:
        eng.close()
