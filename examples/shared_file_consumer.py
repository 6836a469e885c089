"""The consumer half of ``shared_file_producer.py``: leases jobs from a shared file.

Given the path of a queue file (``python examples/shared_file_consumer.py jobs.sqlite``)
it handles the jobs of the file's default queue until it takes the job ``"stop"``, or
until no job has come for 30 seconds (a second argument sets another wait, in seconds).
Without an argument it makes a file, fills it and drains it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import spoolq


def consume(path: str, wait: float = 30.0) -> int:
    handled = 0
    with spoolq.SyncQueue.create(path) as q:
        while True:
            try:
                with q.leased(timeout=wait) as job:
                    if job == "stop":
                        return handled
                    handled += 1
            except spoolq.Empty:
                print(f"consumer: no job for {wait:g} s and no stop job; leaving")
                return handled


def main() -> None:
    if len(sys.argv) > 1:
        wait = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
        print(f"consumer: handled {consume(sys.argv[1], wait)} jobs")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "jobs.sqlite")
        with spoolq.SyncQueue.create(path) as q:
            q.put_many([{"job": 1}, {"job": 2}, "stop"])
        print(f"consumer: handled {consume(path)} jobs")


if __name__ == "__main__":
    main()
