"""Reproductions of faults in the line of waiting gets, the remote engine's call deadlines
and the protocol checks; each test states the behaviour the library should have."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import spoolq

from .servers import SRC, ServerProcess


def test_a_late_take_reply_does_not_lose_the_records_it_removed() -> None:
    """A get's deadline bounds the start of its take only: the count refresh that follows
    a late reply, inside the same take, must not raise and lose what the server removed."""
    options = {"timeout": 5.0, "connect_timeout": 5.0}
    with ServerProcess(":memory:") as server:
        url = f"{server.url}/late"
        with spoolq.SyncQueue.create(url, engine_options=options) as consumer, \
                spoolq.SyncQueue.create(url, engine_options=options) as producer:
            consumer.put("a")  # counted ready by the consumer: it takes without a refresh
            producer.put_many(["b", "c"])  # not in the consumer's counts
            os.kill(server.proc.pid, signal.SIGSTOP)
            resume = threading.Timer(1.5, os.kill, (server.proc.pid, signal.SIGCONT))
            resume.start()
            try:
                try:
                    got = consumer.get_many(3, timeout=0.2)
                except spoolq.Unavailable:
                    got = []
            finally:
                resume.join()
            try:
                rest = producer.get_many(3, timeout=1.0)
            except spoolq.Empty:
                rest = []
            assert sorted(got + rest) == ["a", "b", "c"]


# The oldest cbor2 that pyproject.toml allows: the protocol's decoding needs its keywords.
_FLOOR = re.search(r'"cbor2>=([0-9.]+)"', (Path(SRC).parent / "pyproject.toml").read_text())
_OLD_CBOR2 = f"cbor2=={_FLOOR.group(1) if _FLOOR else '?'}"


def test_a_client_with_the_oldest_cbor2_allowed_talks_to_a_server(tmp_path: Path) -> None:
    old = tmp_path / "old"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(old),
         _OLD_CBOR2], capture_output=True, text=True, timeout=300, check=False)
    if installed.returncode != 0:
        pytest.skip(reason=f"{_OLD_CBOR2} could not be installed: {installed.stderr[-300:]}")
    with ServerProcess(":memory:") as server:
        script = (
            "import cbor2, spoolq\n"
            f"assert cbor2.__file__.startswith({str(old)!r}), cbor2.__file__\n"
            f"with spoolq.SyncQueue.create({server.url + '/old'!r}) as q:\n"
            "    q.put('hello')\n"
            "    print(q.get(timeout=5))\n")
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=60, check=False,
                             env={**os.environ, "PYTHONPATH": f"{old}{os.pathsep}{SRC}"})
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.strip() == "hello"
