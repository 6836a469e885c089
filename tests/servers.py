"""Servers for the tests: a real ``python -m spoolq.server`` subprocess, or one on a thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import cbor2

from spoolq.protocol import FrameType, encode_frame
from spoolq.server import Server, start_server

SRC = str(Path(__file__).resolve().parent.parent / "src")


class ServerProcess:
    """``python -m spoolq.server PATH --port 0 ARGS`` with its URL read from its first line."""

    def __init__(self, path: str, *args: str, port: int = 0, log_file: Path | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": SRC}
        self._log = open(log_file, "ab") if log_file else None  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spoolq.server", path, "--port", str(port),
             "--log-level", "INFO" if log_file else "WARNING", *args],
            stdout=subprocess.PIPE, stderr=self._log or subprocess.DEVNULL, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"the server did not start (exit {self.proc.returncode})")
        self.url = line.split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Signal the server, wait for it and close its pipes; return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            if self._log is not None:
                self._log.close()
        return code

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        """The server process stopped (SIGSTOP) for the block: the kernel still accepts
        its connections and takes what is sent, and nothing answers."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class ThreadedServer:
    """The server on an event loop of its own thread, in this process (fast to start)."""

    def __init__(self, path: str, **settings: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.server: Server | None = None
        self._error: BaseException | None = None
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.server = self.loop.run_until_complete(
                    start_server(path, port=0, **settings))
            except BaseException as exc:
                self._error = exc
            started.set()
            if self.server is not None:
                self.loop.run_until_complete(self.server.wait_closed())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

        self._thread = threading.Thread(target=run, name="test-server", daemon=True)
        self._thread.start()
        started.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        assert self.server is not None
        self.url = self.server.url

    def stop(self) -> None:
        if self.server is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.close)
        self._thread.join(20)

    def __enter__(self) -> ThreadedServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def request_frame(ident: int, op: str, **fields: Any) -> bytes:
    """A request frame of ``op`` with ``fields``, as a client sends it."""
    return encode_frame(FrameType.REQUEST, ident, {"op": op, **fields})


def reply_frames(data: bytes) -> list[tuple[int, int, Any]]:
    """(type, id, body) of each complete frame in ``data``."""
    out = []
    while len(data) >= 4 and len(data) >= 4 + struct.unpack_from(">I", data)[0]:
        length, ftype, ident = struct.unpack_from(">IBI", data)
        out.append((ftype, ident, cbor2.loads(data[9:4 + length])))
        data = data[4 + length:]
    return out


def wait_until(condition: Callable[[], Any], within: float = 3.0) -> None:
    """Wait until ``condition()`` is true; AssertionError after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.01)
