"""Two consumer processes sharing one served queue, with leases.

Each consumer leases a job, works on it and acks it. One of them is killed
halfway through a job: the server sees its connection drop and releases its
lease at once, so the other consumer gets that job again (``attempts`` 2)
without waiting for the lease's ttl. Every job ends up done.
Run it with ``python examples/remote_consumers.py``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import spoolq

CONSUMER = """
import os, sys, time, spoolq

url, who, crash_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
with spoolq.SyncQueue.create(url, name="jobs") as q:
    print(f"{who}: ready", flush=True)
    taken = 0
    while True:
        try:
            msg = q.lease(timeout=2.0, ttl=300)   # 5 minutes: no ttl will run out here
        except spoolq.Empty:
            break
        taken += 1
        if taken == crash_at:
            print(f"{who}: crashing while working on job {msg.item['job']}", flush=True)
            os._exit(1)                            # no ack, no goodbye
        time.sleep(0.05)                           # the work
        q.ack(msg)
        print(f"{who}: done job {msg.item['job']} (attempt {msg.attempts})", flush=True)
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen([sys.executable, "-m", "spoolq.server",
                                   str(Path(tmp) / "jobs.sqlite"), "--port", "0",
                                   "--log-level", "WARNING"], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        try:
            url = server.stdout.readline().split()[-1] + "/jobs"
            with spoolq.SyncQueue.create(url, name="jobs") as q:
                consumers = [subprocess.Popen([sys.executable, "-c", CONSUMER, url, who, crash],
                                              stdout=subprocess.PIPE, text=True)
                             for who, crash in (("steady", "0"), ("flaky", "3"))]
                for c in consumers:  # both are connected before the first job arrives
                    assert c.stdout is not None
                    print(c.stdout.readline().strip())
                q.put_many({"job": n} for n in range(20))
                outputs = [c.communicate(timeout=60)[0] for c in consumers]
                lines = [line for out in outputs for line in out.splitlines()]
                print("\n".join(lines))
                redelivered = [ln for ln in lines if "attempt 2" in ln]
                left = q.peek(100)  # asks the server (qsize() is this handle's own count)
                print(f"jobs left in the queue: {len(left)}; redelivered after the crash: "
                      f"{redelivered}")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
            server.stdout.close()


if __name__ == "__main__":
    main()
