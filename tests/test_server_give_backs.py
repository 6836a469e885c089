"""Records the server took but could not hand to its client go back to their queue, as if
never taken: the surplus of a take with no room in its reply, and the records of a reply
left unsent; also when the engine fails to take them back at first."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from spoolq.engines import Lease, open_engine
from spoolq.engines.remote import RemoteEngine
from spoolq.engines.sqlite import SQLiteEngine
from spoolq.errors import EngineError
from spoolq.protocol import MIN_MAX_REPLY, encode_preamble

from .servers import ThreadedServer, request_frame, wait_until


class FailsGivingBack(SQLiteEngine):
    """SQLite whose first ``failures`` give-backs (a restore, or a release that does not
    count the attempt) fail, as a file locked by another process too long makes them."""

    failures = 2

    def restore(self, *args: Any, **kwargs: Any) -> None:
        self._fail()
        super().restore(*args, **kwargs)

    def release(self, *args: Any, **kwargs: Any) -> list[int]:
        if kwargs.get("count_attempt") is False:
            self._fail()
        return super().release(*args, **kwargs)

    def _fail(self) -> None:
        if self.failures:
            self.failures -= 1
            raise EngineError("database is locked")


@pytest.mark.parametrize("leased", [True, False], ids=["lease", "get"])
def test_the_surplus_of_a_take_goes_back_uncounted_once_the_engine_takes_it(
        tmp_path: Path, leased: bool) -> None:
    # A take reads records in chunks; what has no room in the reply goes back. When that
    # failed, a get's surplus was lost, and a lease's stayed leased for the lease's whole
    # ttl, then came back with an attempt nobody received.
    path = tmp_path / "q.sqlite"
    with ThreadedServer(str(path), engine=FailsGivingBack(path)) as srv:
        eng = RemoteEngine(srv.url, max_reply=MIN_MAX_REPLY)
        try:
            now = time.time()
            eng.append("q", [b"%03d" % k + b"x" * 297 for k in range(20)], [300] * 20, now)
            lease = Lease("worker", now + 600) if leased else None
            got = eng.take("q", 20, now, lease)
            assert 0 < len(got) < 20
            # the surplus is back, ready, its attempt undone: only what was sent is out
            wait_until(lambda: eng.counts("q").ready == 20 - len(got), within=5)
            assert eng.counts("q").leased == (len(got) if leased else 0)
            rest = []
            while len(rest) < 20 - len(got):
                more = eng.take("q", 20, now, lease)
                assert more
                rest += more
            assert [r.data[:3] for r in got + rest] == [b"%03d" % k for k in range(20)]
            assert {r.attempts for r in rest} == {1 if leased else 0}
        finally:
            eng.close()


def test_a_give_back_the_engine_refuses_until_the_server_stops_is_tried_once_more(
        tmp_path: Path) -> None:
    """The engine takes the surplus of a get back only at the server's shutdown: the
    records are there when the file is opened again."""
    path = tmp_path / "q.sqlite"
    engine = FailsGivingBack(path)
    engine.failures = 10**6
    srv = ThreadedServer(str(path), engine=engine)
    try:
        eng = RemoteEngine(srv.url, max_reply=MIN_MAX_REPLY)
        try:
            now = time.time()
            eng.append("q", [b"%03d" % k + b"x" * 297 for k in range(20)], [300] * 20, now)
            got = eng.take("q", 20, now, None)
            assert 0 < len(got) < 20
            time.sleep(0.3)  # tried again meanwhile, in vain
        finally:
            eng.close()
        engine.failures = 0
    finally:
        srv.stop()
    check = open_engine(str(path))
    try:
        left = check.peek("q", 20)
        assert [r.data[:3] for r in left] == [b"%03d" % k for k in range(len(got), 20)]
    finally:
        check.close()


def _connect_not_reading(url: str) -> socket.socket:
    """A raw connection with a small receive buffer, its preamble sent: one that does not
    read holds up a large reply in the server's buffers."""
    host, port = url.removeprefix("spoolq://").rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect((host, int(port)))
    sock.sendall(encode_preamble())
    return sock


def test_a_get_whose_reply_a_client_did_not_read_by_the_shutdown_gives_its_records_back(
        tmp_path: Path) -> None:
    # The client does not read its reply: the shutdown cuts it off after a second without
    # progress. The records of its get were removed and never reached it: they were lost.
    path = tmp_path / "q.sqlite"
    eng = open_engine(str(path))
    big = [b"%02d" % k + b"b" * (1 << 20) for k in range(12)]
    eng.append("q", big, [len(b) for b in big], 1.0)
    eng.append("q", [b"after"], [5], 1.0)
    eng.close()
    srv = ThreadedServer(str(path))
    sock = _connect_not_reading(srv.url)
    try:
        sock.sendall(request_frame(1, "take", queue="q", n=12, now=time.time(), lease=None))
        assert srv.server is not None
        server = srv.server
        wait_until(lambda: any(c.unsent() for c in list(server.connections)), within=5)
        srv.stop()
        assert not srv._thread.is_alive()
    finally:
        sock.close()
        srv.stop()
    check = open_engine(str(path))
    try:
        assert [r.data[:2] for r in check.peek("q", 20)] == \
            [b"%02d" % k for k in range(12)] + [b"af"]
    finally:
        check.close()


class RestoresThenFails(SQLiteEngine):
    """SQLite whose first restore is stored but then fails, as one whose database
    connection is lost while its commit is under way does (the outcome unknown)."""

    fail_next = True

    def restore(self, *args: Any, **kwargs: Any) -> None:
        super().restore(*args, **kwargs)
        if self.fail_next:
            self.fail_next = False
            raise EngineError("the connection was lost during the commit")


def test_a_give_back_whose_failure_hid_its_success_is_not_restored_twice(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The surplus of a get went back, though the engine said it failed; a get right after
    # took it, and the later try put it back once more: delivered twice.
    path = tmp_path / "q.sqlite"
    with ThreadedServer(str(path), engine=RestoresThenFails(path)) as srv:
        small = RemoteEngine(srv.url, max_reply=MIN_MAX_REPLY)
        other = RemoteEngine(srv.url)
        try:
            now = time.time()
            small.append("q", [b"%03d" % k + b"x" * 297 for k in range(20)], [300] * 20, now)
            got = small.take("q", 20, now, None)
            assert 0 < len(got) < 20
            rest = other.take("q", 20, now, None)  # at once, before any later try is due
            assert [r.data[:3] for r in got + rest] == [b"%03d" % k for k in range(20)]
            time.sleep(0.5)  # a later try would be due by now
            assert tuple(other.counts("q"))[:3] == (0, 0, 0)
            assert other.take("q", 20, now, None) == []
        finally:
            small.close()
            other.close()
    assert not [r for r in caplog.records if "they are lost" in r.getMessage()]
