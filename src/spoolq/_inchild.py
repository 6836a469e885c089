"""Live objects of one kind that a forked child each tells it was forked: a module makes
one :class:`InChild` (at import, so that the order of the hooks of :func:`os.fork` is
the order in which the modules were imported), and each object adds itself."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ChildLock", "InChild"]

T = TypeVar("T")


class InChild(Generic[T]):
    """Calls ``hook(obj)`` in a forked child for each object added and still alive."""

    def __init__(self, hook: Callable[[T], None]) -> None:
        self._objects: weakref.WeakSet[T] = weakref.WeakSet()
        self._hook = hook
        if hasattr(os, "register_at_fork"):  # not on Windows
            os.register_at_fork(after_in_child=self._run)

    def add(self, obj: T) -> None:
        self._objects.add(obj)

    def _run(self) -> None:
        for obj in list(self._objects):
            self._hook(obj)


class ChildLock:
    """A lock of a module's shared state that a forked child gets anew: a thread that held
    it at the fork does not exist in the child, which would wait for it for ever. Take it
    as ``with x.lock:`` (the lock the ``with`` took is the one it releases)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        if hasattr(os, "register_at_fork"):  # not on Windows
            os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self.lock = threading.Lock()
