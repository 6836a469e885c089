"""What happens to every queue core of the process in a forked child and at exit:
:mod:`spoolq.core` registers these two hooks (after the hooks of the modules it uses)."""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

from .owners import new_owner

if TYPE_CHECKING:
    from .core import QueueCore

__all__ = ["CORES", "after_fork_in_child", "flush_at_exit"]

CORES: weakref.WeakSet[QueueCore] = weakref.WeakSet()
"""Every queue core of this process, for :func:`after_fork_in_child` and
:func:`flush_at_exit`."""


def after_fork_in_child() -> None:
    # A thread of the parent inside a call held the handle's lock at the fork: that
    # thread is gone here, and the lock would stay held for ever.
    # A child that goes on with its parent's handles leases under its own name: the
    # leases it takes belong to it, not to the parent (whose exit would hand them to
    # others while the child works on them), and closing a handle there gives back only
    # the child's leases, never the ones the parent still works on.
    for core in list(CORES):
        core.lock = threading.RLock()
        core._holding_lock = threading.Lock()
        core.owner = new_owner()
        core.owners.add(core.owner)
        core._after_fork_in_child()


def flush_at_exit() -> None:
    for core in list(CORES):
        core._flush_at_exit()
