"""The server's record of the leases each connection delivered, and how long the remote
client's calls last when the server stalls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import spoolq
from spoolq.engines import Lease
from spoolq.engines.remote import RemoteEngine

from .servers import ServerProcess, ThreadedServer
from .test_server_sessions import Raw, _until


@pytest.fixture(params=["memory", "sqlite"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ThreadedServer]:
    """A server in this process: the memory engine (called on the event loop) or SQLite
    (called on the engine thread)."""
    path = ":memory:" if request.param == "memory" else str(tmp_path / "q.sqlite")
    with ThreadedServer(path) as srv:
        yield srv


def _remembered(srv: ThreadedServer) -> tuple[int, int]:
    """(deliveries the connections remember, records in the server's map of holders),
    read on the server's loop."""
    server = srv.server
    assert server is not None

    async def count() -> tuple[int, int]:
        held = sum(len(h) for conn in server.connections for h in conn.delivered.values())
        return held, sum(map(len, server.holders.values()))

    return asyncio.run_coroutine_threadsafe(count(), srv.loop).result(5)


def test_leases_that_ran_out_into_the_dead_letters_are_not_remembered_for_ever(
    served: ThreadedServer,
) -> None:
    # Each lease ran out and went to the dead letters, so nobody took its record again: the
    # connection remembered every one of them for as long as it lived.
    eng = RemoteEngine(served.url)
    try:
        now = time.time()
        eng.append("q", [b"x%d" % k for k in range(500)], [2] * 500, now)
        for _ in range(500):
            now += 1.0
            (rec,) = eng.take("q", 1, now, Lease("worker", now + 0.5))
            assert rec.attempts == 1
            assert eng.expire("q", now + 0.6, max_attempts=1) == 1  # a dead letter now
        assert eng.counts("q").leased == 0 and eng.counts("q.dead").ready == 500
        held, holders = _remembered(served)
        assert held <= 128 and holders <= 128, (held, holders)
        # What is still out is remembered: a connection that ends gives it back.
        eng.append("q", [b"live"], [4], now)
        assert len(eng.take("q", 1, now, Lease("worker", now + 600))) == 1
        assert _remembered(served)[0] >= 1
    finally:
        eng.close()


def test_a_dropped_connection_still_gives_back_what_it_held_after_forgetting_leases_that_ran_out(
    served: ThreadedServer,
) -> None:
    eng = RemoteEngine(served.url)
    client = Raw(served.url)
    try:
        now = time.time()
        eng.append("q", [b"x%d" % k for k in range(100)], [2] * 100, now)
        # Leases that run out at once, among leases that are still out, many times over
        # what a connection remembers before it forgets the leases that ran out.
        live = []
        for k in range(100):
            until = now + (600 if k % 10 == 0 else 0.001)
            (ident, *_) = client.call("take", queue="q", n=1, now=now, lease=["w", until])
            if k % 10 == 0:
                live.append(ident)
            now += 0.01
        client.close()  # no goodbye: what it still holds goes back at once
        _until(lambda: eng.counts("q").ready >= len(live))
        back = eng.take("q", 100, time.time(), None)
        assert set(live) <= {r.id for r in back}, "a lease still out was not given back"
    finally:
        client.close()
        eng.close()


def test_a_call_deadline_bounds_the_calls_of_its_thread_when_the_server_stalls() -> None:
    # A blocked get re-reads the counts before its long-poll: that call took the engine's
    # timeout (10 s here, 30 s by default), not what was left of the get's own.
    with ServerProcess(":memory:") as server:
        engine = RemoteEngine(f"{server.url}/jobs", timeout=10, connect_timeout=10)
        try:
            assert engine.counts("jobs").ready == 0
            with server.stalled():
                for _ in range(2):  # on the connection open, then on a new one
                    start = time.monotonic()
                    with (
                        engine.call_deadline(start + 0.5),
                        pytest.raises(spoolq.Unavailable),
                    ):
                        engine.counts("jobs")
                    assert time.monotonic() - start < 1.5
            with engine.call_deadline(time.monotonic()):  # the server answers within the grace
                assert engine.counts("jobs").ready == 0
            engine.append("jobs", [b"x"], [1], time.time())
            assert engine.counts("jobs").ready == 1  # no deadline after the block
        finally:
            engine.close()
