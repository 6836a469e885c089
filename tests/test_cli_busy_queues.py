"""The ``spoolq`` command against queues that other programs are using meanwhile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import spoolq

ROOT = Path(__file__).resolve().parent.parent
N = 300

# Fails every item it gets at once: with max_attempts=1 each goes straight back to the
# dead letters. It runs until the file named by argv[2] exists.
FAILING_CONSUMER = """
import os, sys
import spoolq
path, stop = sys.argv[1], sys.argv[2]
with spoolq.SyncQueue.create(path, serializer="json", max_attempts=1,
                             poll_interval=0.001) as q:
    open(stop + ".ready", "w").close()
    while not os.path.exists(stop):
        try:
            m = q.lease(timeout=0.01)
        except spoolq.Empty:
            continue
        q.nack(m)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return env


def test_requeue_dead_ends_while_a_consumer_keeps_failing_the_items(tmp_path: Path) -> None:
    """``requeue --dead`` moved dead letters until there were none: while a consumer
    failed each moved item straight back to the dead letters, it moved them again (469
    moves for 300 dead letters here) and, with a consumer fast enough, never ended. It
    now moves as many as there were when it started."""
    path = str(tmp_path / "q.sqlite")
    stop = str(tmp_path / "stop")
    with spoolq.SyncQueue.create(path, serializer="json", max_attempts=1) as q:
        q.put_many(list(range(N)))
        for _ in range(N):
            q.nack(q.lease(timeout=5))
        assert q.stats["dead"] == N
    consumer = subprocess.Popen([sys.executable, "-c", FAILING_CONSUMER, path, stop],
                                env=_env())
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(stop + ".ready") and time.monotonic() < deadline:
            time.sleep(0.05)
        proc = subprocess.run([sys.executable, "-m", "spoolq", "requeue", path, "-q", "default",
                               "--dead", "--chunk", "1", "--json"],
                              capture_output=True, text=True, env=_env(), timeout=120,
                              check=False)
    finally:
        open(stop, "w").close()
        consumer.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dead_moved"] == N
    with spoolq.SyncQueue.create(path, serializer="json") as q:
        stats = q.stats
        assert stats["dead"] + stats["count"] == N
