"""Records the server took but could not hand to its client go back to their queue, as if
never taken: the surplus of a take with no room in its reply, and the records of a reply
left unsent; also when the engine fails to take them back at first."""

from __future__ import annotations

import itertools
import logging
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


@pytest.mark.parametrize("take_at_once", [True, False], ids=["taken-first", "tried-first"])
def test_a_give_back_whose_failure_hid_its_success_is_not_restored_twice(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, take_at_once: bool) -> None:
    # The surplus of a get went back, though the engine said it failed; a get right after
    # took it, and the later try put it back once more: delivered twice. Tried again
    # before any take, it is refused (the queue holds those ids), which is no loss.
    path = tmp_path / "q.sqlite"
    with ThreadedServer(str(path), engine=RestoresThenFails(path)) as srv:
        small = RemoteEngine(srv.url, max_reply=MIN_MAX_REPLY)
        other = RemoteEngine(srv.url)
        try:
            now = time.time()
            small.append("q", [b"%03d" % k + b"x" * 297 for k in range(20)], [300] * 20, now)
            got = small.take("q", 20, now, None)
            assert 0 < len(got) < 20
            if not take_at_once:
                time.sleep(0.5)  # a later try is due: refused, the records are there
            rest = other.take("q", 20, now, None)  # at once: before any later try is due
            assert [r.data[:3] for r in got + rest] == [b"%03d" % k for k in range(20)]
            time.sleep(0.5)  # a later try would be due by now
            assert tuple(other.counts("q"))[:3] == (0, 0, 0)
            assert other.take("q", 20, now, None) == []
        finally:
            small.close()
            other.close()
    assert not [r for r in caplog.records if "they are lost" in r.getMessage()]


class RefusesAtTheRetry(SQLiteEngine):
    """SQLite whose first restore fails and stores nothing, and whose next one refuses the
    records for a reason other than their ids being held (one a newer release of the
    engine would refuse, say)."""

    calls = 0

    def restore(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            raise EngineError("database is locked")
        if self.calls == 2:
            raise ValueError("cannot restore these records: their enqueue time is not a "
                             "number; nothing was restored")
        super().restore(*args, **kwargs)


def test_a_give_back_refused_at_its_retry_for_another_reason_is_reported_lost(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Any ValueError of the later try was taken as "the records were back already": the
    # surplus of the get was lost and only an INFO line said so, wrongly.
    path = tmp_path / "q.sqlite"
    engine = RefusesAtTheRetry(path)
    with ThreadedServer(str(path), engine=engine) as srv:
        eng = RemoteEngine(srv.url, max_reply=MIN_MAX_REPLY)
        try:
            now = time.time()
            eng.append("q", [b"%03d" % k + b"x" * 297 for k in range(20)], [300] * 20, now)
            got = eng.take("q", 20, now, None)
            assert 0 < len(got) < 20
            wait_until(lambda: engine.calls >= 2, within=5)
            time.sleep(0.3)
            assert engine.calls == 2
        finally:
            eng.close()
    lost = [r for r in caplog.records if "they are lost" in r.getMessage()]
    assert lost and lost[0].levelname == "ERROR"
    assert not [r for r in caplog.records if "back already" in r.getMessage()]


class BlocksGivingBack(SQLiteEngine):
    """SQLite whose give-backs fail while ``blocked`` is set, each after ``delay``
    seconds (a lock another process holds until the engine's lock timeout); it notes
    when each restore began and ended."""

    blocked = True
    delay = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tries: list[tuple[float, float]] = []

    def restore(self, *args: Any, **kwargs: Any) -> None:
        start = time.monotonic()
        try:
            if self.blocked:
                time.sleep(self.delay)
                raise EngineError("database is locked")
            super().restore(*args, **kwargs)
        finally:
            self.tries.append((start, time.monotonic()))


@pytest.mark.parametrize("recovered", [False, True],
                         ids=["engine-still-failing", "engine-recovered"])
def test_a_purge_deletes_the_records_waiting_to_go_back_too(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, recovered: bool) -> None:
    # The surplus of a get waited for another try when the queue was purged; the try
    # after the purge put those records back into the emptied queue.
    caplog.set_level(logging.INFO, logger="spoolq")
    path = tmp_path / "q.sqlite"
    engine = BlocksGivingBack(path)
    with ThreadedServer(str(path), engine=engine) as srv:
        eng = RemoteEngine(srv.url, max_reply=MIN_MAX_REPLY)
        try:
            now = time.time()
            eng.append("q", [b"%03d" % k + b"x" * 297 for k in range(20)], [300] * 20, now)
            eng.append("other", [b"stays"], [5], now)
            got = eng.take("q", 20, now, None)
            assert 0 < len(got) < 20
            left = eng.counts("q").ready  # not read by the take; the rest waits to go back
            assert left < 20 - len(got)
            if recovered:
                time.sleep(1.0)  # the tries so far failed: the next is a while away
                engine.blocked = False
            purged = eng.purge("q")
            assert purged == (20 - len(got) if recovered else left)
            engine.blocked = False
            time.sleep(0.6)  # a try left waiting would be due by now
            assert tuple(eng.counts("q"))[:2] == (0, 0)
            assert eng.take("q", 20, now, None) == []
            assert eng.counts("other").ready == 1
        finally:
            eng.close()
    dropped = [r for r in caplog.records if "deleted by a purge" in r.getMessage()]
    assert bool(dropped) is not recovered
    assert not [r for r in caplog.records if "they are lost" in r.getMessage()]


def test_takes_wait_on_one_try_of_the_waiting_give_backs_per_pause(tmp_path: Path) -> None:
    # Every take tried the waiting give-backs again first, due or not: with the engine
    # slow to refuse them, each take waited for a failing try of its own.
    path = tmp_path / "q.sqlite"
    engine = BlocksGivingBack(path)
    engine.delay = 0.2
    with ThreadedServer(str(path), engine=engine) as srv:
        eng = RemoteEngine(srv.url, max_reply=MIN_MAX_REPLY)
        try:
            now = time.time()
            eng.append("q", [b"%03d" % k + b"x" * 297 for k in range(20)], [300] * 20, now)
            eng.append("other", [b"%02d" % k for k in range(20)], [2] * 20, now)
            got = eng.take("q", 20, now, None)
            assert 0 < len(got) < 20
            slow = 0
            for k in range(20):
                start = time.monotonic()
                assert [r.data for r in eng.take("other", 1, now, None)] == [b"%02d" % k]
                slow += time.monotonic() - start >= engine.delay
            tries = list(engine.tries)
            # each try began a pause (50 ms at first, growing) after the one before ended
            assert all(b[0] - a[1] >= 0.045 for a, b in itertools.pairwise(tries)), tries
            assert slow <= 5
            engine.blocked = False
            wait_until(lambda: eng.counts("q").ready == 20 - len(got), within=5)
            rest = eng.take("q", 20, now, None)
            assert [r.data[:3] for r in got + rest] == \
                [b"%03d" % k for k in range(len(got) + len(rest))]
        finally:
            eng.close()
