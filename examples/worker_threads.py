"""Worker threads on a SyncQueue, the queue.Queue way (put, get, task_done, join)."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import spoolq


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, \
            spoolq.SyncQueue.create(Path(tmp) / "jobs.sqlite") as q:
        results: list[int] = []
        lock = threading.Lock()

        def work() -> None:
            while True:
                try:
                    n = q.get()
                except spoolq.QueueShutDown:
                    return
                with lock:
                    results.append(n * n)
                q.task_done()

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        q.put_many(range(200))
        q.join()
        q.shutdown()
        for t in threads:
            t.join()
        print(f"4 threads squared {len(results)} numbers; sum {sum(results)}")


if __name__ == "__main__":
    main()
