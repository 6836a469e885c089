"""close() of a queue on a server that stopped answering, while another thread's put waits
for its reply: it returns within its wait (ten seconds, made one here) and a second, not
after the remote engine's timeout of 30 s; the put ends with an error."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import spoolq
import spoolq._aioclose
import spoolq.sync

from .servers import ServerProcess


@pytest.mark.parametrize("maxsize", [0, 100])
def test_close_cuts_a_put_waiting_on_a_stalled_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maxsize: int) -> None:
    monkeypatch.setattr(spoolq.sync, "_CLOSE_WAIT", 1.0)
    with ServerProcess(":memory:") as srv:
        q = spoolq.SyncQueue[str].create(f"{srv.url}/jobs", maxsize=maxsize)
        q.put("warm")  # connected
        outcome: list[BaseException | None] = []

        def put() -> None:
            try:
                q.put("stalled")
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            t = threading.Thread(target=put)
            t.start()
            time.sleep(0.3)  # the put is waiting for its reply
            began = time.monotonic()
            q.close()
            took = time.monotonic() - began
            t.join(5)
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        assert took < 4.0, took
        assert not t.is_alive()
        assert outcome and isinstance(outcome[0], spoolq.SpoolqError), outcome


def test_aclose_cuts_a_put_waiting_on_a_stalled_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nor does the event loop wait for the put's write while the queue shuts down.
    monkeypatch.setattr(spoolq._aioclose, "_CLOSE_WAIT", 1.0)

    async def main(url: str, pid: int) -> tuple[float, BaseException | None]:
        q = await spoolq.Queue[str].create(url)
        await q.put("warm")
        os.kill(pid, signal.SIGSTOP)
        try:
            put = asyncio.create_task(q.put("stalled"))
            await asyncio.sleep(0.3)  # the put is waiting for its reply
            began = time.monotonic()
            await q.aclose()
            took = time.monotonic() - began
        finally:
            os.kill(pid, signal.SIGCONT)
        done, _ = await asyncio.wait([put], timeout=5)
        return took, put.exception() if done else None

    with ServerProcess(":memory:") as srv:
        took, error = asyncio.run(main(f"{srv.url}/jobs", srv.proc.pid))
    assert took < 4.0, took
    assert isinstance(error, spoolq.SpoolqError), error


def test_shutdown_does_not_hold_the_loop_for_a_stalled_server() -> None:
    # shutdown() is synchronous, as asyncio.Queue's is: it must not block the event loop
    # for the engine's timeout (30 s) waiting for a put's write to a server that stopped
    # answering. That put learns its outcome from its own await: once the server answers
    # again it is written, and gets drain it before raising QueueShutDown.
    async def main(url: str, pid: int) -> tuple[float, list[str], bool]:
        q = await spoolq.Queue[str].create(url)
        await q.put("warm")
        os.kill(pid, signal.SIGSTOP)
        try:
            put = asyncio.create_task(q.put("stalled"))
            await asyncio.sleep(0.3)  # the put is waiting for its reply
            began = time.monotonic()
            q.shutdown()
            took = time.monotonic() - began
        finally:
            os.kill(pid, signal.SIGCONT)
        await asyncio.wait_for(put, 10)
        got = [await asyncio.wait_for(q.get(), 10) for _ in range(2)]
        try:
            await asyncio.wait_for(q.get(), 10)
            refused = False
        except spoolq.QueueShutDown:
            refused = True
        await q.aclose()
        return took, got, refused

    with ServerProcess(":memory:") as srv:
        took, got, refused = asyncio.run(main(f"{srv.url}/jobs", srv.proc.pid))
    assert took < 1.0, took
    assert got == ["warm", "stalled"]
    assert refused
