"""A producer that puts jobs into a queue kept by a spoolq server in another process.

It starts ``python -m spoolq.server`` on a free port (as you would run it
under systemd), puts 1000 jobs through ``spoolq://127.0.0.1:PORT/jobs``, stops
the server with SIGTERM, starts it again on the same file and finds every job
still there. Run it with ``python examples/remote_producer.py``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import spoolq


@contextmanager
def spoolq_server(path: Path, port: int = 0) -> Iterator[str]:
    """Run ``python -m spoolq.server PATH`` until the block ends; yield its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "spoolq.server", str(path),
                             "--port", str(port), "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()  # "listening on spoolq://127.0.0.1:PORT"
        if not line.startswith("listening on "):
            raise RuntimeError("the server did not start")
        yield line.split()[-1]
    finally:
        proc.send_signal(signal.SIGTERM)  # a clean shutdown: nothing received is lost
        proc.wait(30)
        proc.stdout.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.sqlite"
        with spoolq_server(path) as url:
            port = int(url.rsplit(":", 1)[1])
            with spoolq.SyncQueue.create(f"{url}/jobs", name="jobs") as q:
                start = time.perf_counter()
                for n in range(0, 1000, 100):
                    q.put_many({"job": i, "email": f"user{i}@example.org"}
                               for i in range(n, n + 100))
                elapsed = time.perf_counter() - start
                print(f"put {q.stats['count']} jobs through {url}/jobs in {elapsed:.2f} s")
        print("server stopped")
        with spoolq_server(path, port) as url, \
                spoolq.SyncQueue.create(f"{url}/jobs", name="jobs") as q:
            print(f"server restarted: {q.qsize()} jobs waiting; first: {q.peek(1)[0]}")


if __name__ == "__main__":
    main()
