"""A get or lease blocked while its engine's server is away waits for it to come back."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

import spoolq

from .servers import ServerProcess


def test_a_blocked_get_waits_out_a_server_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    server = ServerProcess(path)
    port, url = server.port, server.url
    got: list[object] = []
    errors: list[BaseException] = []
    with spoolq.SyncQueue.create(f"{url}/jobs") as q:
        def consume() -> None:
            try:
                got.append(q.get())
            except BaseException as exc:
                errors.append(exc)

        consumer = threading.Thread(target=consume)
        consumer.start()
        time.sleep(0.3)
        server.stop()
        time.sleep(1.0)  # the consumer's calls fail meanwhile
        assert consumer.is_alive() and not errors
        with ServerProcess(path, port=port) as again:
            with spoolq.SyncQueue.create(f"{again.url}/jobs") as producer:
                producer.put("after the restart")
            consumer.join(15)
            assert not errors and got == ["after the restart"]


def test_a_get_with_a_timeout_raises_unavailable_when_the_server_stays_away(
        tmp_path: Path) -> None:
    server = ServerProcess(str(tmp_path / "q.sqlite"))
    with spoolq.SyncQueue.create(f"{server.url}/jobs") as q:
        server.stop()
        start = time.monotonic()
        with pytest.raises(spoolq.Unavailable):
            q.get(timeout=1.0)
        assert 0.9 < time.monotonic() - start < 10
        with pytest.raises(spoolq.Unavailable):
            q.get(block=False)  # a call that does not wait raises at once


def test_an_async_blocked_get_waits_out_a_server_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    server = ServerProcess(path)
    port, url = server.port, server.url

    async def main() -> None:
        async with await spoolq.Queue.create(f"{url}/jobs") as q:
            getting = asyncio.ensure_future(q.get())
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(1.0)
            assert not getting.done()
            with ServerProcess(path, port=port) as again:
                async with await spoolq.Queue.create(f"{again.url}/jobs") as producer:
                    await producer.put("after the restart")
                assert await asyncio.wait_for(getting, 15) == "after the restart"

    asyncio.run(main())


def test_close_during_an_outage_does_not_raise_for_the_leases_it_holds(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The leases come back without it, when they run out: close() logs that it could
    not give them back."""
    path = str(tmp_path / "q.sqlite")
    server = ServerProcess(path)
    port = server.port
    q = spoolq.SyncQueue.create(f"{server.url}/jobs")
    q.put_many(["a", "b"])
    assert q.lease(ttl=1).item == "a"
    server.stop()
    start = time.monotonic()
    with caplog.at_level("WARNING", logger="spoolq"):
        q.close()
    assert time.monotonic() - start < 15
    assert "could not give back" in caplog.text
    with ServerProcess(path, port=port) as again, \
            spoolq.SyncQueue.create(f"{again.url}/jobs") as q2:
        assert sorted([q2.get(timeout=10), q2.get(timeout=10)]) == ["a", "b"]
