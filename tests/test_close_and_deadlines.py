"""The waiting line, the remote engine's call deadlines and its close(), each checked
against a real server process."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import spoolq
from spoolq.engines.remote import RemoteEngine

from .servers import ServerProcess
from .test_server import _self_signed


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_close_does_not_wait_out_a_call_connecting_to_a_stalled_server(
        tmp_path: Path, tls: bool) -> None:
    # close() cut a running call only once its connection existed: a call connecting again
    # to a stalled server (the handshake, or TLS's) held the engine's lock for the whole
    # connect_timeout, and close() waited all of it.
    args, options = (), {}
    if tls:
        cert, key = _self_signed(tmp_path)
        args, options = ("--tls-cert", str(cert), "--tls-key", str(key)), {"ca_file": str(cert)}
    with ServerProcess(":memory:", *args) as server:
        engine = RemoteEngine(f"{server.url}/q", timeout=1.0, connect_timeout=8.0, **options)
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
        assert not caller.is_alive()
        assert [type(exc) for exc in errors] == [spoolq.ClosedError], errors
