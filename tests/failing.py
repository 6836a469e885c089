"""Engines whose calls fail on demand, as a full disk or a server gone away makes a real
one fail."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import spoolq
from spoolq.engines import Engine


class FailingAppend:
    """Delegates to a real engine; the next ``failures`` appends raise an EngineError."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.failures = 0

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        if self.failures:
            self.failures -= 1
            raise spoolq.EngineError("no space left on device")
        return self._inner.append(queue, records, raw_sizes, now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class FailingSettle:
    """Delegates to a real engine; the next ``ack_failures`` acks and ``release_failures``
    releases (nacks) raise an EngineError, as a server gone away makes a remote engine
    fail. While ``gate`` is clear, an ack waits for it (``acking`` is set meanwhile)."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.ack_failures = 0
        self.release_failures = 0
        self.gate = threading.Event()
        self.gate.set()
        self.acking = threading.Event()

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        self.acking.set()
        self.gate.wait(30)
        if self.ack_failures:
            self.ack_failures -= 1
            raise spoolq.EngineError("the server went away")
        return self._inner.ack(queue, deliveries, owner)

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str,
                **options: Any) -> list[int]:
        if self.release_failures:
            self.release_failures -= 1
            raise spoolq.EngineError("the server went away")
        return self._inner.release(queue, deliveries, owner, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
