"""Lease owners: who holds a lease, and whether that process still runs."""

from __future__ import annotations

import os
import socket
import uuid

__all__ = ["new_owner", "owner_is_dead", "owner_is_here"]


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


def _system_id(*paths: str) -> str:
    """The first 12 hex digits of the first readable id file ("" when none)."""
    for path in paths:
        try:
            with open(path, "rb") as f:
                text = f.read(64).decode("ascii", "replace").strip().replace("-", "").lower()
        except OSError:
            continue
        if len(text) >= 12 and all(c in "0123456789abcdef" for c in text[:12]):
            return text[:12]
    return ""


_BOOT = _system_id("/proc/sys/kernel/random/boot_id")
"""This boot of this machine: shared by its containers, new at each boot."""
_MACHINE = _system_id("/etc/machine-id", "/var/lib/dbus/machine-id")
"""This machine (or container image), across boots."""


def new_owner() -> str:
    """A new owner name: ``host:pid:process-start:random``.

    ``process-start`` is ``start/pid-namespace/boot/machine``: the process's start
    time, its pid namespace, and the ids of this boot and this machine (each empty
    when the system does not tell it), which tell processes of another machine or
    container with the same host name from the ones of this host."""
    pid = os.getpid()
    stat = _proc_stat(pid)
    started = "0" if stat is None else stat[1]
    start = f"{started}/{_pid_namespace()}/{_BOOT}/{_MACHINE}"
    return f"{socket.gethostname()}:{pid}:{start}:{uuid.uuid4().hex[:12]}"


def owner_is_here(owner: str) -> bool:
    """Whether a lease owner names a process of this host, its current boot and this pid
    namespace: one whose state :func:`owner_is_dead` can tell."""
    parts = owner.rsplit(":", 3)
    if len(parts) != 4 or parts[0] != socket.gethostname():
        return False
    _started, *place = parts[2].split("/")
    if len(place) >= 3 and (place[1] != _BOOT or place[2] != _MACHINE):
        return False
    namespace = place[0] if place else ""
    return not namespace or namespace == _pid_namespace()


def owner_is_dead(owner: str) -> bool:
    """Whether a lease owner is a process on this host that no longer runs.

    Owners on other hosts (another machine with the same host name included) or in
    other pid namespaces (other containers), or in an unknown form, are never declared
    dead: their leases come back when their ttl runs out. Neither is a process whose
    state cannot be read (another user's, with /proc hidden). A process that ended but
    was not waited for by its parent (a zombie) is dead, and so is every owner of an
    earlier boot of this machine; a process that runs under a reused pid is told apart
    by its start time.
    """
    parts = owner.rsplit(":", 3)
    if len(parts) != 4 or parts[0] != socket.gethostname():
        return False
    host_pid, start = parts[1], parts[2]
    if not (host_pid.isascii() and host_pid.isdigit()) or not 0 < len(host_pid) <= 9:
        return False
    started, *place = start.split("/")
    if len(place) >= 3:
        namespace, boot, machine = place[:3]
        if boot != _BOOT:
            # Another machine with the same host name, unless this machine has been
            # restarted since: then every process of the earlier boot has ended.
            return bool(boot and _BOOT and machine) and machine == _MACHINE
        if machine != _MACHINE:
            return False
    else:
        namespace = place[0] if place else ""
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
