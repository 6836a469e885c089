"""A connection whose call was given up (its reply to be dropped when it comes) is still
checked before the next call: when the server restarted meanwhile, the next call connects
anew instead of failing on the dead connection, with its outcome unknown."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import spoolq
from spoolq.engines.remote import RemoteEngine

from .servers import ServerProcess


@pytest.mark.parametrize("late_reply", [False, True])
def test_a_put_after_a_restart_connects_anew_though_a_reply_was_given_up(
        tmp_path: Path, late_reply: bool) -> None:
    path = str(tmp_path / "q.sqlite")
    first = ServerProcess(path)
    engine = RemoteEngine(f"{first.url}/q")
    try:
        engine.append("q", [b"a"], [1], time.time())
        os.kill(first.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(spoolq.Unavailable), \
                    engine.call_deadline(time.monotonic() + 0.1):
                engine.counts("q")  # given up: its reply is dropped when it comes
        finally:
            os.kill(first.proc.pid, signal.SIGCONT)
        if late_reply:
            time.sleep(0.5)  # the reply comes, unread, before the server goes
            first.stop()
        else:
            first.stop(signal.SIGKILL)
        with ServerProcess(path, port=first.port) as second:
            assert engine.append("q", [b"b"], [1], time.time()) == [2]
            assert [r.data for r in engine.peek("q", 10)] == [b"a", b"b"]
            second.stop()
    finally:
        engine.close()
        first.stop(signal.SIGKILL)
