"""What a review of the late changes to the waiting line, the remote engine's call
deadlines and its close() found, each checked against a real server process."""

from __future__ import annotations

import threading
import time

import pytest

import spoolq
from spoolq.engines.remote import RemoteEngine

from .servers import ServerProcess


@pytest.mark.xfail(strict=True, reason="RemoteEngine.close() cuts a running call only when "
                   "its connection exists: one connecting again to a stalled server holds "
                   "the engine's lock for connect_timeout and close() waits all of it")
def test_close_does_not_wait_out_a_call_connecting_to_a_stalled_server() -> None:
    with ServerProcess(":memory:") as server:
        engine = RemoteEngine(f"{server.url}/q", timeout=1.0, connect_timeout=8.0)
        errors: list[BaseException] = []

        def count() -> None:
            try:
                engine.counts("q")
            except BaseException as exc:  # any outcome: only close()'s time counts
                errors.append(exc)

        with server.stalled():
            with pytest.raises(spoolq.Unavailable):
                engine.counts("q")  # the engine's timeout: its connection goes
            caller = threading.Thread(target=count)
            caller.start()  # connects again; the stalled server never answers the handshake
            time.sleep(0.3)
            start = time.monotonic()
            engine.close()
            took = time.monotonic() - start
        caller.join(15)
        assert took < 3.0, f"close() took {took:.1f} s"
