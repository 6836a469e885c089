"""A producer process and a consumer process sharing one SQLite queue file.

This script starts the consumer (``shared_file_consumer.py``) as a separate
process, then produces jobs into the same file; the consumer prints what it
handled and exits when it sees the "stop" job.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import spoolq

HERE = Path(__file__).resolve().parent


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "shared.sqlite")
        with spoolq.SyncQueue.create(path) as q:
            consumer = subprocess.Popen([sys.executable, str(HERE / "shared_file_consumer.py"),
                                         path])
            for n in range(20):
                q.put({"job": n})
                time.sleep(0.005)
            q.put("stop")
            consumer.wait(60)
            # qsize() answers from this handle's counts; peek() reads the file
            print(f"producer: consumer exited with {consumer.returncode}; "
                  f"{len(q.peek(100))} items left in the file")


if __name__ == "__main__":
    main()
