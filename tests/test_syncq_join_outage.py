"""SyncQueue.join() while the queue's server is away: it waits for the items it counts, as
a blocked get does, rather than raise the server's absence to the thread calling it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from spoolq import SyncQueue

from .servers import ServerProcess


def test_join_waits_through_a_server_restart_and_sees_the_items_taken_meanwhile(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    server = ServerProcess(path)
    port = server.port
    outcome: list[object] = []

    def join(q: SyncQueue[str]) -> None:
        try:
            q.join()
            outcome.append("returned")
        except BaseException as exc:  # what the thread met is what the test reports
            outcome.append(exc)

    with SyncQueue.create(f"{server.url}/jobs") as q:
        q.put_many(["a", "b"])
        assert q.get() == "a"
        joining = threading.Thread(target=join, args=(q,))
        joining.start()
        server.stop()
        time.sleep(1.0)  # some 20 polls of the counts, none of which can be read
        assert joining.is_alive() and outcome == []
        q.task_done()  # "a"; "b" is still in the file
        time.sleep(0.2)
        assert joining.is_alive() and outcome == []
        with ServerProcess(path, port=port):
            with SyncQueue.create(f"{server.url}/jobs") as other:
                assert other.get() == "b"
            joining.join(20)  # the file holds nothing now
            assert outcome == ["returned"]
