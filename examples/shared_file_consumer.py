"""The consumer half of ``shared_file_producer.py``: leases jobs from a shared file.

Run on its own it needs the path of the queue file: ``python shared_file_consumer.py
jobs.sqlite``. Without an argument it makes a file, fills it and drains it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import spoolq


def consume(path: str) -> int:
    handled = 0
    with spoolq.SyncQueue.create(path) as q:
        while True:
            with q.leased(timeout=30) as job:
                if job == "stop":
                    return handled
                handled += 1


def main() -> None:
    if len(sys.argv) > 1:
        print(f"consumer: handled {consume(sys.argv[1])} jobs")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "jobs.sqlite")
        with spoolq.SyncQueue.create(path) as q:
            q.put_many([{"job": 1}, {"job": 2}, "stop"])
        print(f"consumer: handled {consume(path)} jobs")


if __name__ == "__main__":
    main()
