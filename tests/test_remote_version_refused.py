"""A real server of a later protocol (one that no longer speaks the client's version)
refuses the client with code 3: the client raises VersionMismatch naming the server it
reached and the versions each side speaks, through ``SyncQueue``, the async ``Queue``
and the command line. It raised the server's bare 'protocol version 2 is not
supported', which named neither the server nor the versions it speaks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import spoolq
from spoolq.protocol import VERSION, VersionMismatch

ROOT = Path(__file__).resolve().parent.parent
_LATER = VERSION + 1

# The server of this source tree, made to speak only a later protocol version.
_SERVER = textwrap.dedent(f"""
    import sys
    import spoolq.protocol
    spoolq.protocol.VERSION = spoolq.protocol.MIN_VERSION = {_LATER}
    from spoolq.server import main
    sys.exit(main([sys.argv[1], "--port", "0"]))
""")


@pytest.fixture
def later_server(tmp_path: Path) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(tmp_path / "q.sqlite")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        yield line.split()[-1].replace("spoolq://", "")
    finally:
        proc.terminate()
        proc.wait(20)
        proc.stdout.close()


def _check(exc: BaseException, where: str) -> None:
    assert isinstance(exc, VersionMismatch) and isinstance(exc, spoolq.ConfigurationError)
    assert not isinstance(exc, spoolq.Unavailable)
    said = str(exc)
    assert f"the spoolq server at {where}" in said, said
    assert f"version {VERSION}" in said and f"version {_LATER}" in said, said


def test_sync_queue_names_the_server_and_both_versions(later_server: str) -> None:
    with pytest.raises(VersionMismatch) as info:
        spoolq.SyncQueue.create(f"spoolq://{later_server}/jobs")
    _check(info.value, later_server)


def test_async_queue_names_the_server_and_both_versions(later_server: str) -> None:
    async def create() -> None:
        await spoolq.Queue.create(f"spoolq://{later_server}/jobs")

    with pytest.raises(VersionMismatch) as info:
        asyncio.run(create())
    _check(info.value, later_server)


def test_the_command_line_names_the_server_and_both_versions(later_server: str) -> None:
    done = subprocess.run([sys.executable, "-m", "spoolq", "info", f"spoolq://{later_server}/"],
                          check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 3, done.stderr
    assert f"the spoolq server at {later_server}" in done.stderr, done.stderr
    assert f"version {_LATER}" in done.stderr, done.stderr
