"""Custom serializers and compressors called by one thread at a time.

Puts encode in their callers' threads, so a thread-safe queue would otherwise call a custom
codec object from several threads at once. :class:`OneAtATime` wraps one; the lock is one
per object, shared by every queue that uses it, and renewed in a forked child. The thread
that holds it may call in again: a serializer may put into a queue that uses it too.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

__all__ = ["OneAtATime"]

_custom_locks: weakref.WeakKeyDictionary[object, threading.RLock] = weakref.WeakKeyDictionary()
_custom_locks_lock = threading.Lock()
_shared_custom_lock = threading.RLock()  # for objects that take no weak reference


def _custom_lock(obj: object) -> threading.RLock:
    """The lock serializing calls into one custom codec object, shared by every codec
    that uses it (the same object may serve several queues)."""
    with _custom_locks_lock:
        try:
            lock = _custom_locks.get(obj)
            if lock is None:
                lock = _custom_locks[obj] = threading.RLock()
        except TypeError:  # unhashable, or no weak reference to it
            return _shared_custom_lock
        return lock


_wrappers: weakref.WeakSet[OneAtATime] = weakref.WeakSet()


def _new_locks_in_child() -> None:
    """A child forked while another thread held one of these locks would wait for it for
    ever: that thread does not exist in the child. Each lock is replaced, shared as it
    was."""
    global _custom_locks_lock, _shared_custom_lock  # noqa: PLW0603
    _custom_locks_lock = threading.Lock()
    fresh: dict[int, threading.RLock] = {id(_shared_custom_lock): threading.RLock()}
    _shared_custom_lock = fresh[id(_shared_custom_lock)]
    for obj, lock in list(_custom_locks.items()):
        _custom_locks[obj] = fresh.setdefault(id(lock), threading.RLock())
    for wrapper in list(_wrappers):
        wrapper._lock = fresh.setdefault(id(wrapper._lock), threading.RLock())


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_new_locks_in_child)


def _owned(data: object) -> object:
    """``data`` as bytes of its own when it is a bytearray or memoryview: a custom codec
    may hand back a buffer it reuses on its next call."""
    return bytes(data) if isinstance(data, (bytearray, memoryview)) else data


class OneAtATime:
    """A custom serializer or compressor called by one thread at a time.

    Puts encode in their callers' threads, so a thread-safe queue would otherwise call a
    custom object from several threads at once; one written for a single thread then
    mixes up the payloads (wrong items with valid checksums) or, holding a C compressor
    object, crashes the process. Output that is a bytearray or memoryview is copied
    before the next call may start: a codec that returns one buffer it reuses (as
    zero-copy encoders do) would otherwise have it overwritten by another thread's call
    between the return and the copy. Anything else is handed back as it is, for the
    codec to check."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self._lock = _custom_lock(obj)
        _wrappers.add(self)

    def dumps(self, item: Any) -> Any:
        with self._lock:
            return _owned(self.obj.dumps(item))

    def loads(self, data: bytes) -> Any:
        with self._lock:
            return self.obj.loads(data)

    def compress(self, data: bytes) -> Any:
        with self._lock:
            return _owned(self.obj.compress(data))

    def decompress(self, data: bytes) -> Any:
        with self._lock:
            return _owned(self.obj.decompress(data))
