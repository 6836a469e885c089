"""Naming a full disk in an engine's error where the storage library reports it as an I/O
error: LMDB turns a write cut short by a full file system into ``EIO``, and SQLite the
shared-memory file it cannot grow into ``disk I/O error``."""

from __future__ import annotations

import os

LOW = 64 << 20
"""Below this many free bytes, an I/O error of a write is taken for a full disk."""


def free_bytes(path: str) -> int | None:
    """The bytes an unprivileged write may still take on the file system holding ``path``
    (a file, or one to be made), or None when that cannot be told."""
    try:
        st = os.statvfs(os.path.dirname(os.path.realpath(path)) or ".")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def full_disk_note(path: str) -> str:
    """``": no space left on the device (N bytes free ...)"`` when the file system holding
    ``path`` is all but full, else ``""``: what to add to an I/O error's message."""
    free = free_bytes(path)
    if free is None or free >= LOW:
        return ""
    return (f": no space left on the device (the file system holding {path} has {free} "
            "bytes free; the disk is full)")
