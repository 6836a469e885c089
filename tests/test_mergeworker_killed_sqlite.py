"""A process whose threads put while another gets (takes that write the pending puts in
their transaction) is killed with SIGKILL: every put that returned is in the file or
was got, none twice, and each thread's puts are in its order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spoolq import SyncQueue

_CHILD = """
import os, sys, threading
from spoolq import SyncQueue, Empty
path, logs, durability = sys.argv[1], sys.argv[2], sys.argv[3]
q = SyncQueue.create(path, durability=durability, maxsize=50)

def put(w):
    with open(os.path.join(logs, f"put{w}"), "a", buffering=1) as log:
        k = 0
        while True:
            q.put([w, k])
            log.write(f"{k}\\n")
            k += 1

def get():
    with open(os.path.join(logs, "got"), "a", buffering=1) as log:
        while True:
            try:
                w, k = q.get(timeout=0.05)
            except Empty:
                continue
            log.write(f"{w} {k}\\n")

threads = [threading.Thread(target=put, args=(w,), daemon=True) for w in range(4)]
threads.append(threading.Thread(target=get, daemon=True))
for t in threads:
    t.start()
print("running", flush=True)
threading.Event().wait()
"""


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    text = path.read_text()
    return text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]


@pytest.mark.parametrize("durability", ["commit", "fsync"])
def test_killed_while_putting_and_getting(tmp_path: Path, durability: str) -> None:
    path = tmp_path / "q.sqlite"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(logs),
                              durability], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "running"
        time.sleep(1.5)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    got = [tuple(map(int, line.split())) for line in _lines(logs / "got")]
    acked = {(w, int(k)) for w in range(4) for k in _lines(logs / f"put{w}")}
    with SyncQueue.create(str(path)) as q:
        left = [tuple(item) for item in q.get_many(1_000_000, block=False)] \
            if q.qsize() else []
        assert q.qsize() == 0
    assert acked  # puts returned before the kill
    assert len(set(got)) == len(got)
    assert len(set(left)) == len(left)
    assert not set(got) & set(left)
    missing = acked - set(got) - set(left)
    assert len(missing) <= 1, sorted(missing)  # the one a get took as it was killed
    for w in range(4):
        mine = [k for who, k in got + left if who == w]
        assert mine == sorted(mine)
