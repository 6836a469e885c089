"""redis-server processes of the suite's own, on 127.0.0.1 only.

Each policy (``appendfsync everysec`` or ``always``) gets its own server on a
free port from 6390 up, with its data in a temporary directory, append-only
file on, RDB snapshots and AOF rewrites off. They are stopped by pid.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("measurements")

FIRST_PORT = 6390
LAST_PORT = 6480


@dataclass
class RedisServer:
    policy: str
    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start(policy: str, taken: set[int]) -> RedisServer | None:
    """Start a server with ``appendfsync policy``; None (and a log line) if impossible."""
    binary = shutil.which("redis-server")
    if binary is None:
        log.warning("redis-server not found: the Redis contestants are skipped")
        return None
    port = next(
        (p for p in range(FIRST_PORT, LAST_PORT) if p not in taken and _port_is_free(p)), None
    )
    if port is None:
        log.warning("no free port for redis-server in %d-%d", FIRST_PORT, LAST_PORT)
        return None
    directory = Path(tempfile.mkdtemp(prefix=f"measurements-redis-{policy}-"))
    args = [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--protected-mode",
        "yes",
        "--dir",
        str(directory),
        "--appendonly",
        "yes",
        "--appendfsync",
        policy,
        "--auto-aof-rewrite-percentage",
        "0",
        "--save",
        "",
        "--daemonize",
        "no",
        "--logfile",
        str(directory / "redis.log"),
    ]
    process = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    server = RedisServer(policy, port, process, directory)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _ping(port):
            log.info(
                "redis-server appendfsync %s on 127.0.0.1:%d (pid %d)", policy, port, process.pid
            )
            return server
        time.sleep(0.05)
    log.warning("redis-server appendfsync %s did not start", policy)
    server.stop()
    return None
