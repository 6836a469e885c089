"""Lease owners: who holds a lease, and whether that process still runs."""

from __future__ import annotations

import os
import socket
import uuid

__all__ = ["new_owner", "owner_is_dead"]


def _proc_stat(pid: int) -> tuple[bytes, str] | None:
    """The state letter and start time (clock ticks after boot) of a process, or None
    when /proc cannot tell (no /proc, the process is gone or hidden)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0], fields[19].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def _pid_namespace() -> str:
    """The inode number of this process's pid namespace ("" when unknown): pids only name
    a process within one namespace, and containers that share a host name (or run with
    the host's network) each have their own."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return ""
    ino = link[link.find("[") + 1:-1]
    return ino if ino.isascii() and ino.isdigit() else ""


def new_owner() -> str:
    """A new owner name: ``host:pid:process-start:random``.

    ``process-start`` is the process's start time, followed by ``/`` and its pid
    namespace where the system tells them."""
    pid = os.getpid()
    stat = _proc_stat(pid)
    start = "0" if stat is None else stat[1]
    namespace = _pid_namespace()
    if namespace:
        start = f"{start}/{namespace}"
    return f"{socket.gethostname()}:{pid}:{start}:{uuid.uuid4().hex[:12]}"


def owner_is_dead(owner: str) -> bool:
    """Whether a lease owner is a process on this host that no longer runs.

    Owners on other hosts or in other pid namespaces (other containers), or in an
    unknown form, are never declared dead: their leases come back when their ttl runs
    out. Neither is a process whose state cannot be read (another user's, with /proc
    hidden). A process that ended but was not waited for by its parent (a zombie) is
    dead; one that runs under a reused pid is told apart by its start time.
    """
    parts = owner.rsplit(":", 3)
    if len(parts) != 4 or parts[0] != socket.gethostname():
        return False
    host_pid, start = parts[1], parts[2]
    if not (host_pid.isascii() and host_pid.isdigit()) or not 0 < len(host_pid) <= 9:
        return False
    started, _, namespace = start.partition("/")
    if namespace and namespace != _pid_namespace():
        return False
    pid = int(host_pid)
    if pid == 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists and belongs to another user: /proc tells whether it is the owner
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        # Gone since the kill() above, or hidden from this user: the next look decides.
        return False
    state, now_started = stat
    if state in (b"Z", b"X", b"x"):
        return True
    return started not in ("0", now_started)
