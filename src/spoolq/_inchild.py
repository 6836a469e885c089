"""Live objects of one kind that a forked child each tells it was forked: a module makes
one :class:`InChild` (at import, so that the order of the hooks of :func:`os.fork` is
the order in which the modules were imported), and each object adds itself."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["InChild"]

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
