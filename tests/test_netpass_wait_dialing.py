"""A wait_ready still connecting (to a server that stalls in the handshake) ends at once
when the waits are cancelled, the engine closed, or its own cancel comes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from spoolq.engines.base import WaitCancel
from spoolq.engines.remote import RemoteEngine

from .servers import ServerProcess


@pytest.fixture(scope="module")
def server() -> Any:
    with ServerProcess(":memory:") as srv:
        yield srv


def _waiting(engine: RemoteEngine, cancel: WaitCancel | None) -> tuple[threading.Thread,
                                                                       list[Any]]:
    out: list[Any] = []

    def wait() -> None:
        started = time.monotonic()
        try:
            out.append(engine.wait_ready("empty", 20, cancel))
        except Exception as exc:
            out.append(exc)
        out.append(time.monotonic() - started)

    thread = threading.Thread(target=wait)
    thread.start()
    return thread, out


@pytest.mark.parametrize("how", ["cancel_waits", "close", "cancel"])
def test_a_wait_connecting_to_a_stalled_server_ends_at_once(server: ServerProcess,
                                                            how: str) -> None:
    engine = RemoteEngine(server.url, connect_timeout=8)
    cancel = WaitCancel()
    end: Callable[[], None] = {"cancel_waits": engine.cancel_waits, "close": engine.close,
                               "cancel": cancel.cancel}[how]
    try:
        with server.stalled():  # the wait's own connection never gets its greeting
            thread, out = _waiting(engine, cancel)
            time.sleep(0.5)
            end()
            thread.join(10)
        assert out[0] is False
        assert out[1] < 2.0
    finally:
        engine.close()
