"""Lease owners: who holds a lease, and whether that process still runs."""

from __future__ import annotations

import os
import socket
import uuid

__all__ = ["new_owner", "owner_is_dead"]

_HOST = socket.gethostname()


def _process_start(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return "0"


def new_owner() -> str:
    """A new owner name: ``host:pid:process-start:random``."""
    pid = os.getpid()
    return f"{_HOST}:{pid}:{_process_start(pid)}:{uuid.uuid4().hex[:12]}"


def owner_is_dead(owner: str) -> bool:
    """Whether a lease owner is a process on this host that no longer runs.

    Owners on other hosts, or in an unknown form, are never declared dead:
    their leases come back when their ttl runs out.
    """
    parts = owner.split(":")
    if len(parts) != 4 or parts[0] != _HOST or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _process_start(pid) != parts[2]
