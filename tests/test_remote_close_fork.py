"""The client of a spoolq server: infinite lease ends, forked children, a close while another
thread's call is blocked, errors of a refused handshake, and a server killed in the middle of
a put_many larger than one request."""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import spoolq
from spoolq.engines import Lease
from spoolq.engines.base import stored_before_failure
from spoolq.engines.remote import RemoteEngine

from .servers import ServerProcess, wait_until


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(":memory:") as srv:
        yield srv


def test_a_lease_until_infinity_outlives_an_expiry_at_the_largest_finite_time(
        server: ServerProcess) -> None:
    # +inf went over the wire as the largest float, so an expiry at that (finite) time
    # ended the lease that never runs out.
    eng = RemoteEngine(server.url)
    try:
        eng.append("forever", [b"a", b"b"], [1, 1], 1.0)
        eng.take("forever", 1, 1.0, Lease("me", math.inf))
        eng.take("forever", 1, 1.0, Lease("you", sys.float_info.max))
        assert eng.expire("forever", sys.float_info.max) == 1  # "you"'s lease ends then
        assert eng.owners("forever") == {"me": 1}
        assert [lr.until for lr in eng.peek_leased("forever", 5)] == [math.inf]
        assert eng.expire("forever", math.inf) == 1
        assert eng.counts("forever").ready == 2
    finally:
        eng.close()


def _in_child(work: Callable[[], object], within: float = 20.0) -> int:
    """Run ``work()`` in a forked child; its exit status (0: it returned), or -9 when it
    did not end ``within`` seconds (it is killed)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + within
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -9
        time.sleep(0.01)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_talks_to_the_server_on_a_connection_of_its_own(
        server: ServerProcess) -> None:
    # The child used its parent's socket: the replies of the two processes were read by
    # either one, and the child's close said goodbye on the parent's connection.
    eng = RemoteEngine(server.url, timeout=3)
    try:
        eng.append("parent", [b"p"], [1], 1.0)
        eng.append("child", [b"c", b"c"], [1, 1], 1.0)
        assert eng._link is not None
        parent_end = eng._link.sock.getsockname()

        def child() -> None:
            assert eng._link is None or eng._link.sock.getsockname() != parent_end
            for _ in range(300):
                assert eng.counts("child").ready == 2
            eng.close()

        outcome: list[int] = []
        forker = threading.Thread(target=lambda: outcome.append(_in_child(child)))
        forker.start()
        for _ in range(300):
            assert eng.counts("parent").ready == 1
        forker.join(30)
        assert outcome == [0]
        assert eng.counts("parent").ready == 1
        assert eng._link is not None and eng._link.sock.getsockname() == parent_end
    finally:
        eng.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_child_forked_while_a_thread_waits_in_a_call_does_not_hang(
        server: ServerProcess) -> None:
    eng = RemoteEngine(server.url, timeout=3)
    try:
        poll = threading.Thread(target=eng.take, args=("idle", 1, 1.0, None), kwargs={"wait": 2})
        poll.start()
        time.sleep(0.3)  # the long-poll holds the engine's connection
        waiter = threading.Thread(target=eng.wait_ready, args=("idle", 2))
        waiter.start()
        time.sleep(0.3)

        def child() -> None:
            eng.append("forked", [b"x"], [1], 1.0)
            assert eng.counts("forked").ready == 1
            assert eng.wait_ready("forked", 1) is True
            eng.close()

        started = time.monotonic()
        assert _in_child(child, within=5) == 0
        assert time.monotonic() - started < 1.5
        poll.join(5)
        waiter.join(5)
        assert eng.counts("forked").ready == 1
    finally:
        eng.close()


def test_close_ends_a_long_poll_of_another_thread_at_once(server: ServerProcess) -> None:
    # close() waited for the long-poll to end (its wait, up to the timeout past it).
    eng = RemoteEngine(server.url)
    outcome: list[object] = []

    def poll() -> None:
        try:
            outcome.append(eng.take("idle", 1, 1.0, None, wait=10))
        except Exception as exc:
            outcome.append(exc)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.3)
    started = time.monotonic()
    eng.close()
    assert time.monotonic() - started < 1.0
    poller.join(2)
    assert len(outcome) == 1 and isinstance(outcome[0], spoolq.ClosedError)
    with pytest.raises(spoolq.ClosedError):
        eng.counts("idle")


def test_close_during_a_call_to_a_stalled_server_takes_a_moment_not_the_timeout() -> None:
    with ServerProcess(":memory:") as srv:
        eng = RemoteEngine(srv.url, timeout=10)
        eng.append("q", [b"x"], [1], 1.0)
        outcome: list[object] = []

        def count() -> None:
            try:
                outcome.append(eng.counts("q"))
            except Exception as exc:
                outcome.append(exc)

        with srv.stalled():
            counter = threading.Thread(target=count)
            counter.start()
            time.sleep(0.3)
            started = time.monotonic()
            eng.close()
            assert time.monotonic() - started < 2.0
            counter.join(2)
        assert len(outcome) == 1 and isinstance(outcome[0], spoolq.ClosedError)


def test_a_close_waits_for_a_quick_call_of_another_thread_and_keeps_its_outcome(
        server: ServerProcess) -> None:
    eng = RemoteEngine(server.url)
    stop = threading.Event()
    results: list[object] = []

    def put() -> None:
        while not stop.is_set():
            try:
                eng.append("quick", [b"x"], [1], 1.0)
                results.append(True)
            except spoolq.ClosedError as exc:
                # refused before it was sent, not cut in the middle
                results.append("unknown" if "outcome" in str(exc) else False)
                return

    putter = threading.Thread(target=put)
    putter.start()
    wait_until(lambda: len(results) > 20)
    eng.close()
    stop.set()
    putter.join(5)
    assert "unknown" not in results
    check = RemoteEngine(server.url)
    try:
        assert check.counts("quick").ready == results.count(True)
    finally:
        check.close()


def test_a_refused_token_names_the_server(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("right\n")
    with ServerProcess(":memory:", "--token-file", str(token)) as srv:
        where = srv.url.removeprefix("spoolq://")
        for given in (None, "wrong"):
            with pytest.raises(spoolq.AuthenticationError, match=where):
                RemoteEngine(srv.url, token=given)
        RemoteEngine(srv.url, token="right").close()


def test_a_server_killed_during_a_put_many_of_several_requests_loses_no_confirmed_item(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    items = [os.urandom(4000) for _ in range(3000)]  # some 190 requests of 64 KiB
    srv = ServerProcess(path, "--max-frame", "65536")
    q = spoolq.SyncQueue.create(f"{srv.url}/jobs", serializer="raw", compressor="none")
    try:
        q.put(b"first")
        killer = threading.Timer(0.2, os.kill, (srv.proc.pid, signal.SIGKILL))
        killer.start()
        try:
            q.put_many(items)
            confirmed = len(items)
        except spoolq.EngineError as exc:
            confirmed = stored_before_failure(exc, len(items))
        killer.join()
        srv.stop()
        srv = ServerProcess(path, "--max-frame", "65536", port=srv.port)
        # q's counts hold what it saw confirmed; a new handle reads what the server stored,
        # which may include the request whose reply the kill cut off
        with spoolq.SyncQueue.create(f"{srv.url}/jobs", serializer="raw",
                                     compressor="none") as fresh:
            stored = fresh.qsize() - 1
        # what the client saw confirmed is there, and at most the request it lost besides
        assert confirmed <= stored <= confirmed + 20
        q.put_many(items[stored:])
        assert q.get_many(len(items) + 1, timeout=5) == [b"first", *items]
    finally:
        q.close()
        srv.stop()
