"""Memory that does not grow with the length of a queue on the disk engines.

Each test fills a file at two sizes, runs one operation in a child process of its own,
and compares how far the operation raised that process's peak of anonymous resident
memory at each size: a fixed cost shows the same growth at both, a cost in proportion to
the queue five times as much at the larger one. Anonymous memory, sampled by a thread,
because LMDB maps its file: the pages of it that an operation reads count in the
process's resident memory, but they are the file's, in the operating system's cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from spoolq.engines import Lease, open_engine

from .cli_support import OTHER_HOST_OWNER

ROOT = Path(__file__).resolve().parent.parent
SMALL, LARGE = 20_000, 100_000
RECORD = b"r" * 1000
ALLOWED_MIB = 16.0
"""What the larger queue may cost above the smaller one: far below the ~90 MiB that
holding the extra 80,000 records of 1 KB takes, far above the noise of a few MiB."""

_CHILD = textwrap.dedent("""
    import sys, threading, time
    import spoolq

    def anonymous():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no RssAnon")

    highest, measuring = 0.0, True

    def sample():
        global highest
        while measuring:
            highest = max(highest, anonymous())
            time.sleep(0.001)

    path = sys.argv[1]
""")


def _fill(path: str, n: int) -> None:
    engine = open_engine(path)
    try:
        for _ in range(0, n, 1000):
            engine.append("default", [RECORD] * 1000, [len(RECORD)] * 1000, time.time())
    finally:
        engine.close()


def _lease_all(path: str, n: int, until: float) -> None:
    """Lease every record of ``default`` to a process of another host, until ``until``."""
    engine = open_engine(path)
    try:
        for _ in range(0, n, 1000):
            engine.take("default", 1000, time.time(), Lease(OTHER_HOST_OWNER, until))
    finally:
        engine.close()


def _growth(path: str, setup: str, operation: str) -> float:
    """How many MiB ``operation`` raised the peak memory of a child process that ran
    ``setup`` first, on the file ``path``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    script = (f"{_CHILD}{setup}\nbefore = anonymous()\n"
              "sampler = threading.Thread(target=sample)\nsampler.start()\n"
              f"{operation}\nmeasuring = False\nsampler.join()\n"
              "print(max(highest, anonymous()) - before)\n")
    done = subprocess.run([sys.executable, "-c", script, path], capture_output=True,
                          text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return float(done.stdout.split()[-1])


def _assert_bounded(small: float, large: float, what: str) -> None:
    assert large - small < ALLOWED_MIB, (
        f"{what}: peak memory grew {small:.1f} MiB with {SMALL:,} records and "
        f"{large:.1f} MiB with {LARGE:,}")


def test_a_reap_of_many_leases_into_the_dead_letters_reads_them_a_chunk_at_a_time(
        tmp_path: Path) -> None:
    # On SQLite, whose transactions keep a bounded page cache. LMDB holds every page a
    # transaction changes until it commits, so there the expire itself grows with the
    # leases it ends (docs/engines.md).
    grown = []
    for n in (SMALL, LARGE):
        path = str(tmp_path / f"reap{n}.sqlite")
        started = time.monotonic()
        _fill(path, n)
        # Long enough for the leases to be taken and the child to start on a loaded
        # machine: they must still be held when it opens the file, and end after that.
        # Filling the file tells how loaded the machine is (about a second when idle).
        until = time.time() + 4.0 + 4 * (time.monotonic() - started)
        _lease_all(path, n, until)
        grown.append(_growth(
            path,
            f"q = spoolq.SyncQueue.create(path, max_attempts=1)\n"
            f"assert q.stats['leased'] == {n}\n"
            f"while time.time() <= {until!r}:\n"
            f"    time.sleep(0.02)",
            f"try:\n"
            f"    q.get(timeout=0.2)\n"
            f"except spoolq.Empty:\n"
            f"    pass\n"
            f"assert q.stats['dead'] == {n}, q.stats"))
    _assert_bounded(*grown, "a reap that moved every lease to the dead letters")
