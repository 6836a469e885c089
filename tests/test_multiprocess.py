"""Several processes producing and consuming on one file: every item delivered exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import queue_path

PRODUCERS = CONSUMERS = 3
PER_PRODUCER = 10_000

PRODUCER = textwrap.dedent("""
    import sys, spoolq
    path, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with spoolq.SyncQueue.create(path) as q:
        for start in range(first, first + count, 250):
            q.put_many(range(start, min(start + 250, first + count)))
""")

CONSUMER = textwrap.dedent("""
    import json, os, sys, time, spoolq
    path, done = sys.argv[1], sys.argv[2]
    got = []
    with spoolq.SyncQueue.create(path) as q:
        while True:
            try:
                got += q.get_many(200, timeout=0.3)
            except spoolq.Empty:
                if not os.path.exists(done):
                    continue
                # Every producer has finished: wait out the poll interval so the next call
                # re-reads the file, then drain what is left.
                time.sleep(0.1)
                try:
                    got += q.get_many(None, block=False)
                except spoolq.Empty:
                    break
    print(json.dumps(got))
""")


@pytest.mark.parametrize("engine", ["lmdb", "sqlite"])
def test_producers_and_consumers_in_separate_processes(tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path, engine)
    done = tmp_path / "producers-done"
    consumers = [subprocess.Popen([sys.executable, "-c", CONSUMER, path, str(done)],
                                  stdout=subprocess.PIPE, text=True)
                 for _ in range(CONSUMERS)]
    producers = [subprocess.Popen([sys.executable, "-c", PRODUCER, path,
                                   str(p * PER_PRODUCER), str(PER_PRODUCER)])
                 for p in range(PRODUCERS)]
    try:
        for proc in producers:
            assert proc.wait(60) == 0
        done.touch()
        outputs = [proc.communicate(timeout=60)[0] for proc in consumers]
    finally:
        for proc in producers + consumers:
            proc.kill()
            proc.wait()
    assert all(proc.returncode == 0 for proc in consumers)
    delivered = [item for out in outputs for item in json.loads(out)]
    assert len(delivered) == PRODUCERS * PER_PRODUCER, "an item was lost or delivered twice"
    assert sorted(delivered) == list(range(PRODUCERS * PER_PRODUCER))
    assert sum(1 for out in outputs if json.loads(out)) >= 2, "one consumer took everything"
